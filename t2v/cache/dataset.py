"""Reading a latent cache for training: :class:`CachedLatentDataset` (samples of the cache's
shards, with seeded caption dropout) and :func:`collate_cached`. See :mod:`t2v.cache`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from t2v.buckets import Bucket, SampleRef
from t2v.cache.config import norm_model_id
from t2v.cache.store import (
    EMPTY_FILE,
    CacheError,
    pad_zeros,
    read_cache_json,
    read_index,
    shard_path,
)
from t2v.data.refs import resolve_ref, seeded_rng

log = logging.getLogger("t2v.cache")  # one logger name for the whole cache, as before the split


class CachedLatentDataset(torch.utils.data.Dataset):
    """The samples of a latent cache, for training without the VAE and the text encoder.

    ``dataset[i]`` (or ``dataset[SampleRef(i, epoch, step)]`` from
    :class:`t2v.buckets.BucketBatchSampler`) gives ``{"mean", "logvar"`` (z, f, h, w)``, "cond":
    {name: tensor}`` (the family's conditioning, at its full length), ``"caption", "bucket": (F, H,
    W), "key", "source", "index", "epoch", "position", "caption_dropped"}``. Tensors come in the
    stored dtype (``cache.json``'s ``store_dtype``).

    ``caption_dropout``: the probability that an item's conditioning is the cached empty prompt's
    (its caption then reads ""), decided by ``(seed, epoch, index)`` as in
    :class:`t2v.data.VideoTextDataset`.

    Shards are opened lazily with ``safetensors.safe_open`` and kept open per process, so the
    dataset works in DataLoader workers (handles are never pickled).
    """

    def __init__(self, cache_dir: str | os.PathLike, family: str | None = None, *,
                 caption_dropout: float = 0.0, seed: int = 0) -> None:
        self.root = Path(cache_dir).expanduser()
        self.info = read_cache_json(self.root)
        self.family = self.info["keyed_on"]["model"]["family"]
        self.model_id = self.info["keyed_on"]["model"]["id"]
        if family is not None and family.strip().lower() != self.family:
            raise CacheError(f"{self.root}: this cache was made for the {self.family} family "
                             f"({self.model_id}), not {family}")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        self.caption_dropout = float(caption_dropout)
        self.seed = int(seed)
        self.epoch = 0
        self.entries, self.missing = read_index(self.root)
        if self.missing:
            log.warning("%s: %d index lines point at missing shards or tensors (skipped)", self.root, self.missing)
        if not self.entries:
            raise CacheError(f"{self.root}: the cache holds no samples"
                             + ("" if self.info.get("complete") else " (was `t2v prepare` interrupted?)"))
        if not self.info.get("complete", False):
            log.warning("%s: the cache is incomplete (prepare did not finish): %d samples", self.root, len(self))
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()
        self._empty: dict[str, torch.Tensor] | None = None
        desc = {"cache_key": self.info["cache_key"], "keys": [e["key"] for e in self.entries]}
        self.fingerprint = hashlib.sha1(json.dumps(desc).encode()).hexdigest()[:16]

    # -- about ----------------------------------------------------------------------------------

    @property
    def cache_key(self) -> str:
        return self.info["cache_key"]

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))

    def __len__(self) -> int:
        return len(self.entries)

    def sample_buckets(self) -> list[Bucket]:
        """Each sample's (frames, height, width): what :class:`t2v.buckets.BucketBatchSampler` groups by."""
        return [tuple(e["bucket"]) for e in self.entries]

    def bucket_counts(self) -> dict[Bucket, int]:
        out: dict[Bucket, int] = {}
        for b in self.sample_buckets():
            out[b] = out.get(b, 0) + 1
        return dict(sorted(out.items()))

    def keys(self) -> list[str]:
        return [e["key"] for e in self.entries]

    def check_compatible(self, family: str, model_id: str | None = None) -> None:
        """Raise :class:`CacheError` unless the cache was made by ``family`` (and ``model_id``, when
        given): latents of another VAE or embeddings of another text encoder would train garbage."""
        fam = family.strip().lower()
        if fam != self.family:
            raise CacheError(f"{self.root}: the cache was made with the {self.family} family ({self.model_id}); "
                             f"the trainer uses {fam}: prepare a cache for it")
        if model_id is not None and norm_model_id(model_id) != self.model_id:
            raise CacheError(f"{self.root}: the cache was made with {self.model_id}; the trainer uses "
                             f"{norm_model_id(model_id)}: their VAE and text encoder may differ, prepare a cache "
                             "for this model")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def caption_dropped(self, i: int, epoch: int | None = None) -> bool:
        p = self.caption_dropout
        if p <= 0.0:
            return False
        e = self.epoch if epoch is None else epoch
        return p >= 1.0 or seeded_rng(self.seed, e, i, 1).random() < p

    # -- tensors --------------------------------------------------------------------------------

    def _handle(self, shard: str):
        from safetensors import safe_open

        if self._pid != os.getpid():  # a forked worker: the parent's handles are not ours
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(shard)
        if h is None:
            path = shard_path(self.root, shard)
            try:
                h = safe_open(str(path), framework="pt")
            except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
                raise CacheError(f"{path}: cannot open shard ({e})") from None
            self._handles[shard] = h
        return h

    def empty_cond(self) -> dict[str, torch.Tensor]:
        """The conditioning of the empty prompt (no batch dimension), cached by ``t2v prepare``."""
        if self._empty is None:
            from safetensors.torch import load_file

            path = self.root / EMPTY_FILE
            if not path.is_file():
                raise CacheError(f"{path}: no empty-prompt conditioning in this cache; prepare it with "
                                 "empty_prompt: true (needed for caption dropout)")
            self._empty = load_file(str(path))
        return {k: v.clone() for k, v in self._empty.items()}

    def __getitem__(self, ref: int | SampleRef | tuple) -> dict[str, Any]:
        i, epoch, step = resolve_ref(ref, len(self.entries), self.epoch)
        e = self.entries[i]
        h = self._handle(e["shard"])
        k = e["key"]
        dropped = self.caption_dropped(i, epoch)
        if dropped:
            cond = self.empty_cond()
        else:
            cond = {name: pad_zeros(h.get_tensor(f"{k}.cond.{name}"), length)
                    for name, length in e["cond_len"].items()}
        return {
            "mean": h.get_tensor(f"{k}.mean"),
            "logvar": h.get_tensor(f"{k}.logvar"),
            "cond": cond,
            "caption": "" if dropped else e["caption"],
            "caption_dropped": dropped,
            "bucket": tuple(e["bucket"]),
            "key": k,
            "source": e["source"],
            "index": i,
            "epoch": epoch,
            "position": None if step is None else (epoch, step + 1),
        }

    def close(self) -> None:
        self._handles.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}  # open files stay with the process that opened them
        return state


def collate_cached(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch of one bucket: ``mean``/``logvar`` (B, z, f, h, w); ``cond`` {name: (B, ...)}
    (sequences of different lengths are zero-padded to the longest); the rest as lists (``bucket``
    and ``position`` once, as :func:`t2v.data.collate` does)."""
    if not items:
        raise ValueError("empty batch")
    buckets = {tuple(it["bucket"]) for it in items}
    if len(buckets) > 1:
        raise ValueError(f"batch mixes buckets {sorted(buckets)}; draw batches with BucketBatchSampler")
    names = list(items[0]["cond"])
    if any(list(it["cond"]) != names for it in items):
        raise ValueError("items carry different conditioning tensors (made by different caches?)")
    cond = {}
    for name in names:
        ts = [it["cond"][name] for it in items]
        if ts[0].ndim and len({t.shape[0] for t in ts}) > 1:
            longest = max(t.shape[0] for t in ts)
            ts = [pad_zeros(t, longest) for t in ts]
        cond[name] = torch.stack(ts)
    positions = [it.get("position") for it in items]
    return {
        "mean": torch.stack([it["mean"] for it in items]),
        "logvar": torch.stack([it["logvar"] for it in items]),
        "cond": cond,
        "caption": [it["caption"] for it in items],
        "caption_dropped": [bool(it.get("caption_dropped", False)) for it in items],
        "bucket": items[0]["bucket"],
        "key": [it["key"] for it in items],
        "source": [it["source"] for it in items],
        "index": [it["index"] for it in items],
        "position": max(positions) if all(p is not None for p in positions) else None,
    }
