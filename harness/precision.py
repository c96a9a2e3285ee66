"""The numeric precision a forward pass runs in, for training, evaluation and a served model alike."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch


def resolve_device(device: str) -> str:
    """Return 'cuda' or 'cpu' for a configured device ('auto' picks CUDA when present)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def autocast(precision: str, device: str) -> Callable[[], ContextManager[Any]]:
    """Return a factory of the context a forward pass runs in: autocast to bfloat16 (bf16) or
    float16 (fp16) on `device`, or nothing at fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(torch.device(device).type, dtype=dtype)
