"""Latent caching: encode a training set's videos (VAE posterior) and captions (text encoder) once,
into safetensors shards, so that training never loads the VAE or the text encoder.

Layout of a cache folder::

    DIR/cache.json                 the cache key and everything it is keyed on (model, data, dtypes),
                                   counts, and "complete" (every listed clip is cached)
    DIR/index.jsonl                one line per cached sample: key, shard, caption, bucket, source, ...
    DIR/shards/shard-NNNNN.safetensors   tensors <key>.mean, <key>.logvar, <key>.cond.<name>
    DIR/empty_prompt.safetensors   the conditioning of "" (caption dropout at train time)
    DIR/errors.jsonl               clips the latest run could not use: source, stage, reason

What is cached per sample: the VAE posterior's ``mean`` and ``logvar`` (B dimension dropped), before
any family scaling, so training samples a fresh latent from them every step
(:meth:`t2v.families.base.ModelSpec.latents_from_dist`); and the family's text conditioning
(:meth:`~t2v.families.base.ModelSpec.encode_prompts`, e.g. ``prompt_embeds`` and, for LTX,
``prompt_attention_mask``). Conditioning tensors are stored without their trailing all-zero
positions (Wan zeroes everything past the prompt, so 512 x 4096 floats usually shrink to a few
dozen rows) and padded back with zeros when read: exact.

Keys: a sample's key is :func:`t2v.data.sample_key` (the video file, clip range, window and frame
settings) plus 8 hex digits of its caption's hash, so editing a caption or touching a video redoes
just that sample. A cache folder is keyed by the model (family, id, revision, dtypes), the data
file and the settings that shape the frames; :func:`prepare_cache` refuses a folder prepared
under another key, naming what differs (a folder where nothing was cached yet, e.g. a first run
stopped early, is taken over).

Crash safety and resuming: a shard is written to a temporary file and renamed into place, then
its index lines are appended (whole lines, fsync'd). A killed run loses at most the shard it was
filling; on restart, index lines whose shard (or tensor) is missing are ignored and their samples
redone, a torn last line is cut off, and unreferenced shard files are removed. At the end of a
run the index is rewritten in dataset order, without stale entries (samples no longer in the
dataset), so a resumed cache and a fresh one list the same samples in the same order.

The parts: :mod:`t2v.cache.config` (the ``t2v prepare`` settings, the cache's identity and keys),
:mod:`t2v.cache.store` (the folder's files: cache.json, index, shards), :mod:`t2v.cache.prepare`
(the encoding pass) and :mod:`t2v.cache.dataset` (reading the cache for training). Their public
names are importable from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from t2v.cache.config import ModelRef, PrepareConfig, cache_identity
from t2v.cache.dataset import CachedLatentDataset, collate_cached
from t2v.cache.prepare import PrepareResult, prepare_cache
from t2v.cache.store import (  # noqa: F401 -- the folder's file names are read from here too
    CACHE_FILE,
    CACHE_FORMAT,
    EMPTY_FILE,
    ERRORS_FILE,
    INDEX_FILE,
    LOCK_FILE,
    SHARDS_DIR,
    CacheError,
)
from t2v.cache.store import save_atomic as _save_atomic  # noqa: F401 -- its name before the split

__all__ = [
    "CacheError",
    "CachedLatentDataset",
    "ModelRef",
    "PrepareConfig",
    "PrepareResult",
    "cache_identity",
    "collate_cached",
    "prepare_cache",
]


def nbytes_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cache_size(cache_dir: str | os.PathLike) -> int:
    """Bytes of the cache's shard files and empty-prompt file."""
    root = Path(cache_dir)
    total = sum(p.stat().st_size for p in (root / SHARDS_DIR).glob("shard-*.safetensors"))
    empty = root / EMPTY_FILE
    return total + (empty.stat().st_size if empty.exists() else 0)

