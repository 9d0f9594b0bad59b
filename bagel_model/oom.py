"""Out-of-memory errors leave nothing behind.

An exception's traceback keeps every frame it passed through alive, and with them their locals: a half-loaded
model, the KV caches of a generation. Until the caller drops the exception, that memory stays allocated, exactly
when the caller (ComfyUI: unload all models, then retry) needs it back. ``release_on_oom`` clears the locals of
the finished frames before re-raising the same ``torch.OutOfMemoryError`` (file names and line numbers stay).
"""
from __future__ import annotations

import functools
import traceback

import torch


def release_on_oom(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except torch.OutOfMemoryError as exc:
            traceback.clear_frames(exc.__traceback__)
            raise

    return wrapper
