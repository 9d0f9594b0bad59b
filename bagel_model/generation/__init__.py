"""One request at run time: contexts, conditioning, the sampler, CFG branch velocities, the step cache and the
denoise loop. Imports errors, model and text only."""
