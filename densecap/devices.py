"""Devices and dtypes, one policy for every command (captioning encoders, LLM backends, latent
caching, training, generation).

``resolve_device("auto")`` is this process's CUDA GPU when torch sees one (``cuda:LOCAL_RANK`` under
``accelerate launch``/``torchrun``), else Apple's ``mps``, else ``cpu``; an explicit device is checked
to exist, so a typo or a missing GPU is one clear :class:`~densecap.errors.ConfigError` before any
model loads. ``resolve_dtype`` turns the configs' dtype names (``auto``, ``float32``, ``bfloat16``,
``float16``) into torch dtypes.

torch is imported inside the functions: the CLIs import this module before they know whether a
command needs torch.
"""

from __future__ import annotations

import os
from typing import Any

from densecap.errors import ConfigError

__all__ = ["DTYPE_NAMES", "process_share", "resolve_device", "resolve_dtype", "torch_dtype"]

#: the dtype names the configs accept (besides ``auto`` where a config allows it)
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def process_share() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` of this process when started by ``accelerate launch`` or
    ``torchrun`` (their ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), ``(0, 1, 0)`` otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return 0, 1, 0
    if world < 1 or not 0 <= rank < world:
        return 0, 1, 0
    return rank, world, local


def _mps_available(torch: Any) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str = "auto") -> str:
    """The device name to use for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    import torch

    _, world, local = process_share()
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local % torch.cuda.device_count()}"
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available(torch) else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {device}, but torch sees no CUDA device (use cpu or auto)")
        try:
            index = int(device.split(":", 1)[1]) if ":" in device else 0
        except ValueError:
            raise ConfigError(f"device: {device!r} is not a device (cpu, cuda, cuda:N, mps or auto)") from None
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {device}, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    elif device == "mps" and not _mps_available(torch):
        raise ConfigError("device: mps, but torch sees no MPS device (use cpu or auto)")
    elif device != "cpu":
        try:
            torch.device(device)
        except RuntimeError:
            raise ConfigError(f"device: {device!r} is not a device (cpu, cuda, cuda:N, mps or auto)") from None
    return device


def torch_dtype(name: str) -> Any:
    """``torch.float32`` for ``"float32"``, and so on for :data:`DTYPE_NAMES`."""
    import torch

    if name not in DTYPE_NAMES:
        raise ConfigError(f"dtype: {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def resolve_dtype(name: str, device: Any, *, training: bool = False) -> Any:
    """The torch dtype for ``name`` on ``device`` (a name or a ``torch.device``). ``auto`` is bfloat16 on
    a GPU that supports it; for inference float16 on other GPUs and on mps; float32 otherwise (and for
    training where bfloat16 is missing: float16 weights need loss scaling)."""
    import torch

    if name != "auto":
        return torch_dtype(name)
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32 if training else torch.float16
    if kind == "mps" and not training:
        return torch.float16
    return torch.float32
