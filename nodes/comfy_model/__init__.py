"""ComfyUI's sampling on top of the BAGEL core: the model layer, guider, schedule and noise that stock KSampler,
SamplerCustomAdvanced and guiders drive. Imports `bagel_model` and `comfy`, never the `nodes` modules above it."""
