"""One pass over each expert's weights per LM call: every und- and gen-expert layer of the decoder runs once per
LM call of a denoise step (all image-marker rows of all CFG branches in one und-expert call), and the bytes a
partially resident model reads through the cast path per step equal the residency estimate
(checkpoint/residency.py) within 10 %."""
import pytest
import torch
from PIL import Image

from bagel_model.checkpoint.memory import GiB
from bagel_model.checkpoint.residency import (COMFY_MIN_INFERENCE, COMFY_RESERVE, denoise_residency, group_bytes,
                                              weight_groups)

RED = Image.new("RGB", (64, 48), (200, 30, 30))
T2I_BRANCHES, EDIT_BRANCHES = 2, 3


def _run(pipe, task: str, batch_cfg: bool, callback):
    if task == "t2i":  # cfg_interval over every step: both branches (gen, cfg_text) on each step
        return pipe.generate_image("a red cube", width=64, height=48, steps=3, seed=1, cfg_interval=(0.0, 1.0),
                                   cfg_img_scale=1.0, batch_cfg=batch_cfg, callback=callback)
    return pipe.edit_image([RED], "make it blue", steps=3, seed=1, batch_cfg=batch_cfg, callback=callback)


class StepRecorder:
    """Per denoise step: how often each counted layer ran and the bytes read through ``stored``."""

    def __init__(self, pipe, layers: dict):
        self.calls = dict.fromkeys(layers, 0)
        self.bytes = 0
        self.steps: list[tuple[dict, int]] = []
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in layers.items()]
        pipe.phase_hook = self._phase

    def _hook(self, name):
        def hook(module, args, out):
            self.calls[name] += 1
        return hook

    def _phase(self, phase: str) -> None:
        if phase == "denoise":  # counting starts with the first step
            self.calls = dict.fromkeys(self.calls, 0)
            self.bytes = 0

    def __call__(self, stage: str, step: int, total: int) -> None:
        if stage == "denoise":
            self.steps.append((self.calls, self.bytes))
            self.calls = dict.fromkeys(self.calls, 0)
            self.bytes = 0

    def close(self, pipe) -> None:
        for handle in self.handles:
            handle.remove()
        pipe.phase_hook = None


def _decoder_layers(pipe, group: str) -> dict:
    groups = weight_groups(pipe.model.bagel, pipe.model.vae)
    return {name: module for name, module in groups[group] if ".layers." in name}


@pytest.mark.parametrize("task,branches", [("t2i", T2I_BRANCHES), ("edit", EDIT_BRANCHES)])
@pytest.mark.parametrize("batch_cfg", [True, False])
def test_each_expert_layer_runs_once_per_lm_call(fp32_pipe, task, branches, batch_cfg):
    und, gen = _decoder_layers(fp32_pipe, "und"), _decoder_layers(fp32_pipe, "gen")
    assert any(type(m).__name__ == "Linear" for m in und.values())
    recorder = StepRecorder(fp32_pipe, {**und, **gen})
    try:
        _run(fp32_pipe, task, batch_cfg, recorder)
    finally:
        recorder.close(fp32_pipe)
    calls_per_step = 1 if batch_cfg else branches
    assert len(recorder.steps) == 2  # 3 timesteps, 2 Euler steps
    for calls, _ in recorder.steps:
        und_calls = {calls[name] for name in und}
        gen_calls = {calls[name] for name in gen}
        # Before the change each und Linear ran once per marker row: 2 per branch (4 for T2I, 6 for edit).
        assert und_calls == {calls_per_step}, (task, batch_cfg, und_calls)
        assert gen_calls == {calls_per_step}, (task, batch_cfg, gen_calls)


def _stream(module, recorder: StepRecorder) -> None:
    """The layer's tensors are 'offloaded': every read goes through ``stored`` and is counted."""
    plain = module.stored

    def stored(name):
        tensor = plain(name)
        if tensor is not None:
            recorder.bytes += tensor.numel() * tensor.element_size()
        return tensor
    module.stored = stored


def _pick_streamed(layers: dict, target: int) -> list:
    """Whole layers (a memory manager moves whole layers) whose bytes come closest to ``target`` from below."""
    def size(module):
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())
    picked, total = [], 0
    for name, module in sorted(layers.items(), key=lambda item: -size(item[1])):
        if type(module).__name__ in ("Embedding", "PositionTable"):
            continue  # looked up row by row where it lives: the plan keeps it resident (it costs nothing)
        if total + size(module) <= target * 1.02:
            picked.append(module)
            total += size(module)
    return picked


@pytest.mark.parametrize("task", ["t2i", "edit"])
@pytest.mark.parametrize("batch_cfg", [True, False])
@pytest.mark.parametrize("room", ["und_half", "gen_half"])
def test_bytes_streamed_per_step_match_the_residency_estimate(speed_checkpoint, task, batch_cfg, room):
    from bagel_model import BagelPipeline

    pipe = BagelPipeline.from_pretrained(speed_checkpoint, device="cpu", compute_dtype="fp32")
    config, size = pipe.config, (64, 48) if task == "t2i" else (64, 48)
    sizes = group_bytes(config, "bf16")
    working = denoise_residency(config, "bf16", 64 * GiB, task, *size, device="cpu", batch_cfg=batch_cfg,
                                compute_dtype=torch.float32).working
    base = max(COMFY_MIN_INFERENCE + COMFY_RESERVE, working + COMFY_RESERVE)
    weights_room = sizes["gen"] + sizes["und"] // 2 if room == "und_half" else sizes["gen"] // 2
    plan = denoise_residency(config, "bf16", base + weights_room, task, *size, device="cpu", batch_cfg=batch_cfg,
                             compute_dtype=torch.float32)
    assert plan.streamed_per_step > 0
    recorder = StepRecorder(pipe, {})
    groups = weight_groups(pipe.model.bagel, pipe.model.vae)
    for group in ("gen", "und"):
        for module in _pick_streamed(dict(groups[group]), plan.streamed[group]):
            _stream(module, recorder)
    try:
        _run(pipe, task, batch_cfg, recorder)
    finally:
        recorder.close(pipe)
    assert len(recorder.steps) == 2  # 3 timesteps, 2 Euler steps
    for _, streamed in recorder.steps:
        assert streamed == pytest.approx(plan.streamed_per_step, rel=0.10), (streamed, plan.streamed_per_step)
