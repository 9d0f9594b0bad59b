"""Helpers for the tests of BAGEL inside ComfyUI's own sampling: stock nodes called the way each ComfyUI version
defines them (V1 classes on 0.3.64, V3 ``io.ComfyNode`` on 0.33), and a counter of understanding-expert rows."""
from contextlib import contextmanager

import pytest
import torch


def run_node(cls, **inputs) -> tuple:
    """The outputs of a stock node, V1 or V3."""
    if hasattr(cls, "define_schema"):
        return tuple(cls.execute(**inputs).result)
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def stock(name: str):
    """A stock node class by id (ComfyUI's NODE_CLASS_MAPPINGS, extras included once the pack fixture loaded)."""
    import nodes

    if name not in nodes.NODE_CLASS_MAPPINGS:
        from comfy_extras import nodes_custom_sampler, nodes_easycache, nodes_sd3

        for module in (nodes_custom_sampler, nodes_sd3, nodes_easycache):
            mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
            if mappings is None:
                mappings = {cls.define_schema().node_id: cls for cls in _v3_nodes(module)}
            if name in mappings:
                return mappings[name]
        raise KeyError(name)
    return nodes.NODE_CLASS_MAPPINGS[name]


def _v3_nodes(module):
    """The V3 node classes a comfy_extras module defines."""
    return [value for value in vars(module).values()
            if isinstance(value, type) and value.__module__ == module.__name__ and "define_schema" in vars(value)]


def encode(clip, text: str):
    import nodes

    return run_node(nodes.CLIPTextEncode, clip=clip, text=text)[0]


def empty_latent(width: int, height: int, batch_size: int = 1):
    return run_node(stock("EmptySD3LatentImage"), width=width, height=height, batch_size=batch_size)[0]


class UndRows:
    """Counts the rows the understanding expert's first query projection sees (text prefill: one row per
    token; a denoising LM call: the two image-marker rows of each branch)."""

    def __init__(self, bagel):
        self.calls = []
        layer = bagel.language_model.model.layers[0].self_attn.q_proj
        self._handle = layer.register_forward_hook(lambda module, args, out: self.calls.append(args[0].shape[0]))

    def close(self):
        self._handle.remove()

    @property
    def rows(self) -> int:
        return sum(self.calls)


# Text to Image's guidance defaults, as the BAGEL guider's widgets take them.
GUIDER = dict(cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
              cfg_renorm_min=0.0, cfg_renorm_type="global")


@contextmanager
def fp32_compute():
    """Models loaded inside compute in fp32 on every CPU (ComfyUI's --force-fp32, for the duration of the block).

    The equalities these tests check are float32-rounding sized. With bf16 compute (a CPU with native bf16) the
    first Euler step is still bit-identical, but from the second step on the ~1e-7 differences of ComfyUI's round
    trip through ``denoised = x - sigma * v`` flip bf16 roundings of the model (measured on an AVX512-BF16 CPU:
    0.022 after 2 steps, 0.12 after 4, latents up to 13), which would hide a real difference between two paths."""
    import comfy.model_management as mm

    forced = mm.FORCE_FP32
    mm.FORCE_FP32 = True
    try:
        yield
    finally:
        mm.FORCE_FP32 = forced


def load_outputs(ours, tiny_checkpoint, precision: str = "bf16") -> tuple:
    """The loader's (bagel_model, vae, model, clip) for the tiny checkpoint, computing in fp32 (``fp32_compute``)."""
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    with fp32_compute():
        return ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, precision, False)


def bagel_guider(ours, model, positive, negative, **scales):
    return run_node(ours["BagelMoTGuider"], model=model, positive=positive, negative=negative,
                    **dict(GUIDER, **scales))[0]


def sample_custom(ours, guider, seed: int, steps: int, latent, shift: float = 3.0):
    """SamplerCustomAdvanced with BAGEL-MoT Noise and Schedule and the euler sampler: the output LATENT."""
    noise = run_node(ours["BagelMoTNoise"], seed=seed)[0]
    sigmas = run_node(ours["BagelMoTSigmas"], steps=steps, timestep_shift=shift)[0]
    sampler = run_node(stock("KSamplerSelect"), sampler_name="euler")[0]
    return run_node(stock("SamplerCustomAdvanced"), noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                    latent_image=latent)[0]


def max_diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().float() - b.detach().float()).abs().max())


@pytest.fixture(scope="module")
def ours(comfy_nodes):
    """The pack's nodes as ComfyUI registered them (fixture: import it into a test module)."""
    return comfy_nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def loaded(ours, tiny_checkpoint):
    """The loader's four outputs for the tiny checkpoint in bf16 (fixture: import it into a test module)."""
    return load_outputs(ours, tiny_checkpoint)
