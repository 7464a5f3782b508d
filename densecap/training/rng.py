"""Random-number state of a training process, saved with a checkpoint so that a resumed run draws
exactly what an uninterrupted one would: torch's CPU and CUDA generators, numpy's and Python's global
ones, and optionally the run's own ``torch.Generator`` (the one that draws latents, noise and noise
levels). Files per process: ``rng-RANK.safetensors`` (the tensors) and ``rng-RANK.json`` (the rest)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from densecap.training.checkpoints import write_json

__all__ = ["capture_rng", "load_rng", "restore_rng", "save_rng"]


def capture_rng(generator: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, info)``: the torch states as tensors, numpy's and Python's as JSON-able data."""
    import torch

    tensors = {"torch_cpu": torch.get_rng_state()}
    if generator is not None:
        tensors["generator"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    info = {
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": [py[0], list(py[1]), py[2]],
        "generator_device": str(generator.device) if generator is not None else None,
    }
    return tensors, info


def restore_rng(tensors: dict[str, Any], info: dict[str, Any], generator: Any = None) -> None:
    """Put back what :func:`capture_rng` took (CUDA states only for the devices this process sees)."""
    import torch

    torch.set_rng_state(tensors["torch_cpu"])
    if generator is not None:
        generator.set_state(tensors["generator"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    n = info["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, state, gauss = info["python"]
    random.setstate((version, tuple(state), gauss))


def save_rng(folder: str | os.PathLike, rank: int = 0, generator: Any = None) -> None:
    """This process's RNG states into ``folder/rng-RANK.{safetensors,json}``."""
    from safetensors.torch import save_file

    tensors, info = capture_rng(generator)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(folder) / f"rng-{rank}.safetensors"))
    write_json(Path(folder) / f"rng-{rank}.json", info)


def load_rng(folder: str | os.PathLike, rank: int = 0, generator: Any = None) -> None:
    """Restore the RNG states :func:`save_rng` wrote for ``rank``."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / f"rng-{rank}.safetensors"))
    info = json.loads((Path(folder) / f"rng-{rank}.json").read_text(encoding="utf-8"))
    restore_rng(tensors, info, generator)
