"""What a latent cache is made with and keyed on: the ``t2v prepare`` settings
(:class:`PrepareConfig`, :class:`ModelRef`), the cache's identity and key, and the key of each
cached sample. See :mod:`t2v.cache`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Literal

from pydantic import Field

from densecap.config import StrictModel
from t2v.cache.store import CACHE_FORMAT
from t2v.data.sampling import DataConfig
from t2v.model_ref import FamilyModelRef


class ModelRef(FamilyModelRef):
    """The model whose VAE and text encoder make the cache."""

    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="text encoder (and VAE) dtype")
    vae_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="VAE dtype; default: dtype")


class PrepareConfig(StrictModel):
    """``t2v prepare``: what to encode, with which model, into which folder."""

    model: ModelRef = Field(default_factory=ModelRef)
    data: DataConfig
    cache_dir: str | None = Field(None, description="the cache folder (the CLI's --out overrides it)")
    batch_size: int = Field(1, ge=1, description="samples per VAE / text-encoder call (one bucket per batch)")
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), or a torch device")
    shard_size: int = Field(256, ge=1, description="samples per shard file")
    shard_max_mb: float = Field(1024.0, gt=0, description="start a new shard once this many MB are pending")
    store_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the stored tensors (float32 keeps the encoders' output exactly)")
    empty_prompt: bool = Field(True, description='also cache the conditioning of "" (for caption dropout)')
    decode_workers: int = Field(0, ge=0, description="DataLoader workers decoding clips while the models encode")


def norm_model_id(model_id: str) -> str:
    """A local folder as its real absolute path (so ./m and /abs/m are the same model); hub ids and
    tiny:// references unchanged."""
    if model_id.startswith("tiny://"):
        return model_id
    expanded = os.path.expanduser(model_id)
    if os.path.exists(expanded):
        return os.path.realpath(expanded)
    return model_id


def cache_identity(cfg: PrepareConfig) -> dict[str, Any]:
    """Everything a cache is keyed on: the model that encodes, the data file and the settings that
    shape the frames, and the stored dtype. (Not keyed on: caption dropout, batch size, shard size,
    workers: they do not change what is stored.)"""
    d = cfg.data
    data: dict[str, Any] = {
        "path": os.path.realpath(os.path.expanduser(d.path)),
        "buckets": [list(b) for b in d.bucket_list()],
        "fps": d.fps,
        "stride": d.stride,
        "resize": d.resize,
        "crop": d.crop,
        "long_clips": d.long_clips,
        "max_windows_per_clip": d.max_windows_per_clip if d.long_clips == "windows" else None,
        "video_backend": d.video_backend,
    }
    if d.crop == "random":
        data["seed"] = d.seed
    m = cfg.model
    return {
        "format": CACHE_FORMAT,
        "model": {
            "family": m.family,
            "id": norm_model_id(m.resolved_id()),
            "revision": m.revision,
            "dtype": m.dtype,
            "vae_dtype": m.vae_dtype or m.dtype,
        },
        "data": data,
        "store_dtype": cfg.store_dtype,
    }


def key_of(identity: dict[str, Any]) -> str:
    """The cache key: a hash of :func:`cache_identity`."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def entry_key(sample_key: str, caption: str) -> str:
    """A cached sample's key: its :func:`t2v.data.sample_key` plus 8 hex digits of its caption's hash."""
    return f"{sample_key}-{hashlib.sha256(caption.encode('utf-8')).hexdigest()[:8]}"
