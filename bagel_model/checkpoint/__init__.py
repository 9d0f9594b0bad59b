"""What a BAGEL folder holds (configs, weight files and headers, the pre-quantized marker) and how it becomes
loaded modules: loading, precisions, the memory estimate. Imports config, devices, errors and model only."""
