"""Random checkpoints in the real BAGEL folder layout, for tests, benchmarks and the README demo.

``tiny`` runs each flow in seconds; ``linear`` (LM hidden 1024, 6 layers) is the Linear-heavy one the step profile
uses (bench/profile_step.py); ``small`` (~200 M parameters) has the full-size FLUX autoencoder and, when
a copy is found (``find_qwen25_tokenizer``), the real Qwen2.5 tokenizer; ``real`` has the dimensions of BAGEL-7B-MoT (14.6 B parameters:
meant for ``write_test_folder`` + weights made on a device, e.g. bench/gpu_check.py, not for a 29 GB file).
Weights are random: the images are noise and the text gibberish.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers.pre_tokenizers import ByteLevel

from .checkpoint.folder import read_config
from .checkpoint.loading import build_skeleton
from .config import AEConfig
from .model.embeddings import sincos_2d_table

log = logging.getLogger(__name__)

# The README.md every random folder gets; its first words are how ``is_random_checkpoint`` recognises one.
RANDOM_README = ("Random BAGEL test checkpoint (not a real model). Made by "
                 "`python -m bagel_model make-test-checkpoint`.\n")

QWEN25_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
SPECIAL = set(QWEN25_ADDED_TOKENS[:14])
TINY_MERGES = ("Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġt he", "r e", "a t", "e n", "o r", "Ġ s", "Ġ c",
               "i s", "Ġ w", "a n", "e s", "Ġ o", "Ġ p", "i t")


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vit_hidden: int
    vit_layers_built: int
    vit_heads: int
    vit_intermediate: int
    ae: AEConfig
    real_tokenizer: bool


PRESETS = {
    "tiny": Preset(64, 2, 4, 2, 128, 32, 2, 2, 64,
                   AEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1), real_tokenizer=False),
    "small": Preset(256, 6, 4, 2, 1408, 384, 4, 6, 1536, AEConfig(), real_tokenizer=True),
    # Linear-heavy LM (head_dim 128 and GQA as the real model) with small ViT: the denoising-step profile's preset.
    "linear": Preset(1024, 6, 8, 2, 2816, 384, 4, 6, 1536, AEConfig(), real_tokenizer=True),
    "real": Preset(3584, 28, 28, 4, 18944, 1152, 26, 16, 4304, AEConfig(), real_tokenizer=True),
}


# The team's fixed copy of the Qwen2.5 tokenizer files (vocab.json, merges.txt, tokenizer_config.json with
# BAGEL's 22 added tokens), in the shared folder that CI keeps beside the repository.
SHARED_QWEN25_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "qwen25_tokenizer"


def find_qwen25_tokenizer() -> Path | None:
    """A fixed local copy of the Qwen2.5 tokenizer: $BAGEL_QWEN25_TOKENIZER, else ../shared/fixtures/
    qwen25_tokenizer beside the repository; None when neither exists. Never ComfyUI's copy: its
    tokenizer_config.json changes between ComfyUI versions (0.33 renamed ids 151665-151668)."""
    for candidate in (os.environ.get("BAGEL_QWEN25_TOKENIZER"), SHARED_QWEN25_TOKENIZER):
        if candidate and (Path(candidate) / "vocab.json").is_file() and (Path(candidate) / "merges.txt").is_file():
            return Path(candidate)
    return None


def write_test_folder(out_dir: str | Path, preset: str = "tiny",
                      tokenizer_dir: str | Path | None = None) -> tuple[Path, Path | None]:
    """The JSON configs and tokenizer files of a ``preset`` folder, without weights; returns (folder, the
    tokenizer copied or None for the built-in byte-level one)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    spec = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(tokenizer_dir) if tokenizer_dir else (find_qwen25_tokenizer() if spec.real_tokenizer else None)
    if spec.real_tokenizer and source is None:
        log.warning("No Qwen2.5 tokenizer files found (set BAGEL_QWEN25_TOKENIZER to a folder with vocab.json and "
                    "merges.txt); the %s checkpoint gets the built-in byte-level tokenizer.", preset)
    vocab_rows = _write_tokenizer(out, source)
    _write_configs(out, spec, vocab_rows)
    return out, source


def is_random_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` was written by ``make_test_checkpoint`` / ``write_test_folder`` (random weights)."""
    readme = Path(folder) / "README.md"
    try:
        return readme.is_file() and readme.read_text(encoding="utf-8").startswith(RANDOM_README.split(".")[0])
    except (OSError, UnicodeDecodeError):
        return False


def make_test_checkpoint(out_dir: str | Path, preset: str = "tiny", seed: int = 0,
                         tokenizer_dir: str | Path | None = None) -> Path:
    out, source = write_test_folder(out_dir, preset, tokenizer_dir)
    generator = torch.Generator().manual_seed(seed)
    model, vae = build_skeleton(read_config(out))
    save_file(_random_state(model, generator, torch.bfloat16), str(out / "ema.safetensors"),
              metadata={"format": "pt"})
    save_file(_random_state(vae, generator, torch.float32), str(out / "ae.safetensors"), metadata={"format": "pt"})
    log.info("Wrote %s checkpoint to %s (tokenizer: %s)", preset, out, source or "built-in byte-level")
    return out


def _write_configs(out: Path, spec: Preset, vocab_rows: int) -> None:
    llm = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
           "hidden_size": spec.hidden, "intermediate_size": spec.intermediate,
           "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
           "num_key_value_heads": spec.kv_heads, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
           "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "vocab_size": vocab_rows, "use_sliding_window": False}
    vit = {"model_type": "siglip_vision_model", "hidden_act": "gelu_pytorch_tanh", "hidden_size": spec.vit_hidden,
           "image_size": 980, "intermediate_size": spec.vit_intermediate, "layer_norm_eps": 1e-6,
           "num_attention_heads": spec.vit_heads, "num_channels": 3,
           "num_hidden_layers": spec.vit_layers_built + 1, "patch_size": 14}
    (out / "llm_config.json").write_text(json.dumps(llm, indent=2))
    (out / "vit_config.json").write_text(json.dumps(vit, indent=2))
    ae = asdict(spec.ae)
    ae["ch_mult"] = list(ae["ch_mult"])
    (out / "ae_config.json").write_text(json.dumps(ae, indent=2))
    # The official tables: the tensors' row counts carry max_latent_size=64 and vit side 70.
    (out / "README.md").write_text(RANDOM_README)


def _write_tokenizer(out: Path, source: Path | None) -> int:
    """Writes vocab.json/merges.txt/tokenizer_config.json; returns the embedding row count to use."""
    if source is not None:
        shutil.copyfile(source / "vocab.json", out / "vocab.json")
        shutil.copyfile(source / "merges.txt", out / "merges.txt")
        first_added = len(json.loads((source / "vocab.json").read_text(encoding="utf-8")))
        vocab_rows = 152064
    else:
        # One token per byte, in GPT-2's byte-alphabet order (its characters sorted by code point).
        vocab = {char: index for index, char in enumerate(sorted(ByteLevel.alphabet()))}
        for merge in TINY_MERGES:
            vocab.setdefault(merge.replace(" ", ""), len(vocab))
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n", encoding="utf-8")
        first_added = len(vocab)
        vocab_rows = int(math.ceil((first_added + len(QWEN25_ADDED_TOKENS)) / 32) * 32)
    # BAGEL's tokenizer has exactly the 22 Qwen2.5 added tokens (ComfyUI's copy adds 4 Qwen-Image ones).
    added = {str(first_added + i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                                    "single_word": False, "special": tok in SPECIAL}
             for i, tok in enumerate(QWEN25_ADDED_TOKENS)}
    config = {"added_tokens_decoder": added, "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "clean_up_tokenization_spaces": False,
              "errors": "replace", "model_max_length": 131072, "tokenizer_class": "Qwen2Tokenizer",
              "split_special_tokens": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return vocab_rows


def _random_state(module: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype) -> dict:
    state = {}
    for name, meta in module.state_dict().items():
        state[name] = _random_tensor(name, tuple(meta.shape), generator).to(dtype).contiguous()
    return state


def _random_tensor(name: str, shape: tuple, generator: torch.Generator) -> torch.Tensor:
    if name.endswith("pos_embed"):
        side = math.isqrt(shape[0])
        return sincos_2d_table(shape[1], side)
    if len(shape) == 1:
        is_norm_weight = name.endswith("weight")
        base = torch.ones(shape) if is_norm_weight else torch.zeros(shape)
        return base + 0.02 * torch.randn(shape, generator=generator)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)
