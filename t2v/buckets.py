"""Buckets of (frames, height, width) for video training: which bucket a clip goes to, where its
sampled windows lie, and a batch sampler whose batches never mix buckets.

Everything here works on plain numbers (no video files), so it is cheap to test and reuse; the
dataset (:mod:`t2v.data`) feeds it what the video reader measured.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from densecap.errors import CaptionerError

Bucket = tuple[int, int, int]  # (frames, height, width)


class SamplerError(CaptionerError):
    """A batch sampler's state does not fit the dataset it is loaded into."""


# ----------------------------------------------------------------------------------------------
# sampling rate and windows


def sampled_capacity(num_frames: int, duration: float, fps: float | None = None, stride: int | None = None) -> int:
    """How many frames a clip yields at the sampling rate.

    ``fps``: one frame every ``1/fps`` seconds from the clip start (times ``k / fps`` below the clip's
    ``duration``); ``stride``: every ``stride``-th source frame; neither: every source frame.
    """
    if num_frames <= 0:
        return 0
    if fps is not None:
        return max(1, int(math.floor(duration * fps + 1e-6)))
    step = stride or 1
    return (num_frames - 1) // step + 1


def choose_bucket(width: int, height: int, capacity: int, buckets: Sequence[Bucket]) -> Bucket | None:
    """The bucket for a clip of ``width`` x ``height`` that yields ``capacity`` sampled frames.

    Among the buckets whose frame count the clip can fill: the nearest aspect ratio (compared in log
    space, so 2:1 and 1:2 are equally far from 1:1); among those, the largest frame count; among
    those, the pixel count nearest the clip's. ``None`` when the clip is too short for every bucket.
    """
    fits = [tuple(b) for b in buckets if b[0] <= capacity]
    if not fits or width <= 0 or height <= 0:
        return None
    aspect = math.log(width / height)

    def dist(b: Bucket) -> float:
        return abs(math.log(b[2] / b[1]) - aspect)

    best = min(dist(b) for b in fits)
    near = [b for b in fits if dist(b) <= best + 1e-9]
    most = max(b[0] for b in near)
    near = [b for b in near if b[0] == most]
    area = math.log(width * height)
    return min(near, key=lambda b: (abs(math.log(b[1] * b[2]) - area), -b[1] * b[2]))


def window_starts(capacity: int, frames: int, mode: str, max_windows: int = 1) -> list[int | None]:
    """First sampled position of each window a clip yields (``None``: frames spread over the clip).

    ``head``: one window at the start. ``uniform``: one sample, ``frames`` spread over the whole clip.
    ``windows``: up to ``max_windows`` non-overlapping windows of ``frames``, spread evenly from the
    clip's start to its end (the first starts at 0, the last ends at the clip's last sampled frame).
    """
    if capacity < frames:
        return []
    if mode == "head":
        return [0]
    if mode == "uniform":
        return [None]
    if mode != "windows":
        raise ValueError(f"unknown long-clip mode {mode!r}; expected head, uniform or windows")
    n = max(1, min(int(max_windows), capacity // frames))
    if n == 1:
        return [0]
    span = capacity - frames
    # floor keeps consecutive starts >= frames apart (the spacing span/(n-1) is >= frames)
    return [k * span // (n - 1) for k in range(n)]


# ----------------------------------------------------------------------------------------------
# batch sampler


class SampleRef(NamedTuple):
    """What :class:`BucketBatchSampler` yields for each sample: the dataset index plus where the
    batch lies in the run, so the dataset can seed per-epoch randomness (caption dropout, random
    crops) in worker processes and :func:`t2v.data.collate` can report the batch's position."""

    index: int
    epoch: int
    step: int  # 0-based number of the batch within the epoch (on this rank)


class BucketBatchSampler:
    """Batches of dataset indices that never mix buckets; deterministic given ``(seed, epoch)``.

    Use as a DataLoader's ``batch_sampler``. Each epoch, the samples of each bucket are shuffled
    (when ``shuffle``) and cut into batches of ``batch_size`` (the last, smaller batch of a bucket is
    dropped with ``drop_last``), then the batches of all buckets are shuffled together.

    Position and resuming: the sampler keeps ``epoch`` and the number of batches consumed in it.
    Iterating to the end moves it to the next epoch, so a plain ``for batch in loader`` per epoch
    sees a new order each time (calling :meth:`set_epoch` with the loop's epoch is also fine).
    :meth:`state_dict` gives the position and :meth:`load_state_dict` restores it, and the next
    iteration continues with exactly the batches an uninterrupted run would have seen. A
    DataLoader with workers draws batches ahead of the training loop, so there pass the last batch
    the loop finished (``state_dict(after=batch)``, a batch made by :func:`t2v.data.collate`), which
    records where that batch lies rather than how far the loader has read.

    ``num_replicas``/``rank``: for data-parallel training, every rank builds the same epoch order and
    takes every ``num_replicas``-th batch (the epoch is cut to a multiple of ``num_replicas``
    batches, so all ranks run the same number of steps).

    ``dataset``: a :class:`t2v.data.VideoTextDataset` (anything with ``sample_buckets()``), or a
    sequence giving each sample's bucket.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        keys = dataset.sample_buckets() if hasattr(dataset, "sample_buckets") else list(dataset)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        groups: dict[Any, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(_hashable(key), []).append(i)
        self._groups = [np.asarray(groups[k], dtype=np.int64) for k in sorted(groups, key=_sort_key)]
        self._num_samples = len(keys)
        desc = {
            "keys": [repr(_hashable(k)) for k in keys], "batch_size": self.batch_size, "seed": self.seed,
            "shuffle": self.shuffle, "drop_last": self.drop_last, "num_replicas": self.num_replicas,
        }
        self.fingerprint = hashlib.sha1(json.dumps(desc).encode()).hexdigest()[:16]
        self.epoch = 0
        self.consumed = 0  # batches of ``epoch`` handed out
        self._cached: tuple[int, list[list[int]]] | None = None

    # -- order ----------------------------------------------------------------------------------

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed % 2**64, epoch % 2**64, 0x5A3]))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``, in order (dataset indices)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = self._rng(epoch)
        batches: list[list[int]] = []
        for idx in self._groups:
            order = rng.permutation(idx) if self.shuffle else idx
            for s in range(0, len(order), self.batch_size):
                chunk = order[s:s + self.batch_size]
                if len(chunk) < self.batch_size and self.drop_last:
                    continue
                batches.append([int(i) for i in chunk])
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            usable = len(batches) - len(batches) % self.num_replicas
            batches = batches[self.rank:usable:self.num_replicas]
        self._cached = (epoch, batches)
        return batches

    def __len__(self) -> int:
        """Batches in a whole epoch on this rank (an epoch resumed part-way yields fewer)."""
        return len(self.epoch_batches(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (from its start); a no-op when already there, so a resumed position
        survives a training loop that calls ``set_epoch`` at the top of every epoch."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def __iter__(self) -> Iterator[list[SampleRef]]:
        epoch = self.epoch
        batches = self.epoch_batches(epoch)
        for step in range(self.consumed, len(batches)):
            if self.epoch != epoch:  # set_epoch() called mid-iteration: stop this epoch's stream
                return
            self.consumed = step + 1
            yield [SampleRef(i, epoch, step) for i in batches[step]]
        if self.epoch == epoch:
            self.epoch, self.consumed = epoch + 1, 0

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self, after: Any = None) -> dict[str, Any]:
        """The position: ``{"epoch", "batches_consumed", "fingerprint"}``.

        ``after``: a batch from :func:`t2v.data.collate` (or its ``"position"``, ``(epoch,
        batches_consumed)``): the position just after that batch, whatever the loader has prefetched.
        """
        if after is None:
            epoch, consumed = self.epoch, self.consumed
        else:
            pos = after.get("position") if isinstance(after, dict) else after
            if pos is None:
                raise SamplerError("this batch carries no position: it was not drawn through a "
                                   "BucketBatchSampler (or not collated with t2v.data.collate)")
            epoch, consumed = int(pos[0]), int(pos[1])
        if consumed >= len(self.epoch_batches(epoch)):
            epoch, consumed = epoch + 1, 0
        return {"epoch": epoch, "batches_consumed": consumed, "fingerprint": self.fingerprint,
                "num_samples": self._num_samples, "batch_size": self.batch_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; refuses one saved over a different dataset or settings."""
        fp = state.get("fingerprint")
        if fp != self.fingerprint:
            what = []
            if state.get("num_samples") not in (None, self._num_samples):
                what.append(f"{state.get('num_samples')} samples then, {self._num_samples} now")
            for key in ("batch_size", "seed"):
                if key in state and state[key] != getattr(self, key):
                    what.append(f"{key} {state[key]} then, {getattr(self, key)} now")
            detail = "; ".join(what) or "the samples' buckets or the sampler settings differ"
            raise SamplerError(f"cannot resume the batch order: the saved position is for another dataset or "
                               f"sampler ({detail})")
        self.epoch = int(state["epoch"])
        self.consumed = int(state["batches_consumed"])


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    return key


def _sort_key(key: Any) -> tuple:
    return (0, key) if isinstance(key, tuple) else (1, repr(key))
