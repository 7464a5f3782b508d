"""Video-text training data: read an exported caption dataset, index its clips into buckets, and
serve fixed-size frame tensors.

Input layouts (:func:`read_samples`), as written by ``captioner export``:

``captions.jsonl``
    ``{"video": path, "start": s|null, "end": e|null, "caption": text, ...}`` per line.
``metadata.csv`` / ``metadata.jsonl``
    columns ``file_name`` (relative to the folder), ``caption`` and optionally ``start``/``end``.
``prompts.txt`` + ``videos.txt``
    one caption / one video path per line, aligned (whole videos: no clip ranges).

A folder is searched in that order. Relative video paths resolve against the folder holding the
file that names them.

:class:`VideoTextDataset` probes every video once (in a thread pool), puts each clip in a bucket
(:func:`t2v.buckets.choose_bucket`), turns long clips into one or more samples, and drops and
reports what cannot be used. Items are ``{"video": (C, F, H, W) float32 in [-1, 1], "caption", ...}``;
batch them with :class:`t2v.buckets.BucketBatchSampler` and :func:`collate`.

The parts live in :mod:`t2v.data.layouts` (reading the layouts), :mod:`t2v.data.sampling` (the
settings, frame sampling, sample keys, resizing) and :mod:`t2v.data.refs` (indexing and seeding);
this module holds the dataset and re-exports their names, so ``from t2v.data import ...`` keeps
working.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from densecap.errors import VideoError
from densecap.video import VideoInfo, VideoReader, open_video
from t2v.buckets import (
    Bucket,
    BucketBatchSampler,
    SampleRef,
    SamplerError,
    choose_bucket,
    window_starts,
)
from t2v.data.layouts import (
    LAYOUT_FILES,  # noqa: F401 -- re-exported
    DataError,
    SampleSpec,
    read_samples,
)
from t2v.data.refs import resolve_ref, seeded_rng
from t2v.data.sampling import (
    DEFAULT_SIZE,  # noqa: F401 -- re-exported
    KEY_VERSION,  # noqa: F401 -- re-exported
    DataConfig,
    bucket_of,
    clip_capacity,
    clip_view,
    decode_side,
    frame_indices,
    frames_to_tensor,
    sample_key,
)

__all__ = [
    "Bucket", "BucketBatchSampler", "DataConfig", "DataError", "Sample", "SampleRef", "SampleSpec",
    "SamplerError", "VideoTextDataset", "bucket_of", "collate", "read_samples", "sample_key",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One training sample: a clip (or a window of it) and the bucket it goes to."""

    spec: SampleSpec
    bucket: Bucket
    window: int | None  # first sampled position of the window (at the sampling rate); None: uniform
    start_time: float  # source-file time of the sample's first frame
    width: int  # the video's display size
    height: int


@dataclass(frozen=True)
class _Skip:
    source: str
    reason: str
    kind: str  # "unreadable" | "short"


class VideoTextDataset(torch.utils.data.Dataset):
    """Samples of captioned clips, bucketed; see the module doc.

    ``skipped``: ``(source, reason)`` for every clip left out (unreadable, too short for every
    bucket). Raises :class:`DataError` when no sample is left, naming the cause.

    ``dataset[i]`` or ``dataset[SampleRef(i, epoch, step)]`` (what :class:`BucketBatchSampler`
    yields) gives ``{"video": (C, F, H, W) float32 in [-1, 1], "caption", "bucket": (F, H, W),
    "source", "video_path", "frame_times" (source-file seconds), "index", "epoch", "position"}``.
    Caption dropout and random crops are seeded by ``(seed, epoch, index)``: the epoch comes from the
    ref, or :meth:`set_epoch` for plain indices.
    """

    def __init__(self, specs: Sequence[SampleSpec], cfg: DataConfig) -> None:
        self.cfg = cfg
        self.specs = list(specs)
        self.buckets = cfg.bucket_list()
        self.epoch = 0
        self.samples: list[Sample] = []
        self._skips: list[_Skip] = []
        self._local = threading.local()
        self._index()
        if not self.samples:
            raise DataError(self._empty_message())

    @classmethod
    def from_config(cls, cfg: DataConfig) -> VideoTextDataset:
        return cls(read_samples(cfg.path), cfg)

    # -- indexing -------------------------------------------------------------------------------

    def _index(self) -> None:
        by_file: dict[str, list[int]] = {}
        for k, spec in enumerate(self.specs):
            by_file.setdefault(spec.video, []).append(k)
        jobs = list(by_file.items())
        results: list[list[Sample] | _Skip | None] = [None] * len(self.specs)
        workers = min(self.cfg.probe_workers, len(jobs))
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="t2v-probe") as pool:
                done = list(pool.map(lambda job: self._probe_file(*job), jobs))
        else:
            done = [self._probe_file(*job) for job in jobs]
        for part in done:
            for k, res in part:
                results[k] = res
        for res in results:
            if isinstance(res, _Skip):
                self._skips.append(res)
            elif res:
                self.samples.extend(res)
        if self._skips:
            log.info("%d of %d clips skipped (first: %s: %s)", len(self._skips), len(self.specs),
                     self._skips[0].source, self._skips[0].reason)

    def _probe_file(self, path: str, ks: list[int]) -> list[tuple[int, list[Sample] | _Skip]]:
        try:
            reader = open_video(path, backend=self.cfg.video_backend)
        except VideoError as e:
            return [(k, _Skip(self.specs[k].source, str(e), "unreadable")) for k in ks]
        except Exception as e:  # a decoder failing in a way the reader does not translate
            return [(k, _Skip(self.specs[k].source, f"{path}: {type(e).__name__}: {e}", "unreadable")) for k in ks]
        out = []
        with reader:
            for k in ks:
                spec = self.specs[k]
                try:
                    out.append((k, self._samples_of(spec, reader)))
                except VideoError as e:
                    out.append((k, _Skip(spec.source, str(e), "unreadable")))
        return out

    def _samples_of(self, spec: SampleSpec, reader: VideoReader) -> list[Sample] | _Skip:
        clip, offset = clip_view(reader, spec)
        info = clip.info
        cap = clip_capacity(info, self.cfg)
        bucket = choose_bucket(info.width, info.height, cap, self.buckets)
        if bucket is None:
            need = min(self.buckets, key=lambda b: b[0])[0]
            what = "clip" if spec.start is not None or spec.end is not None else "video"
            reason = (f"{spec.video}: {what} too short: {info.duration:.2f} s ({info.num_frames} frames) gives "
                      f"{cap} frames at {self.cfg.rate_text()}; the smallest bucket needs "
                      f"{self.cfg.need_text(need)}")
            return _Skip(spec.source, reason, "short")
        out = []
        for w in window_starts(cap, bucket[0], self.cfg.long_clips, self.cfg.max_windows_per_clip):
            first = frame_indices(clip, self.cfg, 1, w)[0] if w is not None else 0
            t0 = offset + clip.frame_times([first])[0]
            out.append(Sample(spec, bucket, w, round(t0, 6), info.width, info.height))
        return out

    # -- reporting ------------------------------------------------------------------------------

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(s.source, s.reason) for s in self._skips]

    def _empty_message(self) -> str:
        n = len(self.specs)
        if n == 0:
            return "no clips to index (the sample list is empty)"
        bad = [s for s in self._skips if s.kind == "unreadable"]
        short = [s for s in self._skips if s.kind == "short"]
        need = self.cfg.need_text(min(b[0] for b in self.buckets))
        if len(bad) == n:
            return f"no video files could be read ({n} clips): first error: {bad[0].source}: {bad[0].reason}"
        if len(short) == n:
            return (f"all {n} clips were too short for the smallest bucket ({need}): first: "
                    f"{short[0].source}: {short[0].reason}")
        return (f"no usable clips among {n}: {len(bad)} unreadable (first: {bad[0].source}: {bad[0].reason}); "
                f"{len(short)} too short for the smallest bucket ({need}; first: {short[0].source})")

    def bucket_counts(self) -> dict[Bucket, int]:
        out: dict[Bucket, int] = {}
        for s in self.samples:
            out[s.bucket] = out.get(s.bucket, 0) + 1
        return dict(sorted(out.items()))

    def summary(self) -> str:
        parts = [f"{len(self.samples)} samples from {len(self.specs) - len(self._skips)} of {len(self.specs)} clips"]
        parts += [f"{f}x{h}x{w}: {c}" for (f, h, w), c in self.bucket_counts().items()]
        if self._skips:
            kinds = {k: sum(1 for s in self._skips if s.kind == k) for k in ("unreadable", "short")}
            parts.append(f"skipped {kinds['unreadable']} unreadable, {kinds['short']} too short")
        return "; ".join(parts)

    # -- access ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def sample_buckets(self) -> list[Bucket]:
        return [s.bucket for s in self.samples]

    def bucket_of(self, info: VideoInfo) -> Bucket | None:
        return bucket_of(info, self.cfg)

    def sample_key(self, i: int) -> str:
        s = self.samples[i]
        return sample_key(s.spec, s.window, self.cfg, s.bucket)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices (caption dropout, random crops)."""
        self.epoch = int(epoch)

    def caption_for(self, i: int, epoch: int | None = None) -> str:
        """Sample ``i``'s caption in ``epoch``: "" with probability ``caption_dropout`` (the same
        answer every time for the same seed, epoch and sample)."""
        caption = self.samples[i].spec.caption
        p = self.cfg.caption_dropout
        if p <= 0.0:
            return caption
        e = self.epoch if epoch is None else epoch
        return "" if p >= 1.0 or seeded_rng(self.cfg.seed, e, i, 1).random() < p else caption

    def __getitem__(self, ref: int | SampleRef | tuple) -> dict[str, Any]:
        i, epoch, step = resolve_ref(ref, len(self.samples), self.epoch)
        s = self.samples[i]
        nf, out_h, out_w = s.bucket
        side = decode_side(s.width, s.height, out_h, out_w, self.cfg.resize)
        reader = None
        try:
            reader = self._reader(s.spec.video, side)
            clip, offset = clip_view(reader, s.spec)
            cap = clip_capacity(clip.info, self.cfg)
            if cap < (s.window or 0) + nf:
                raise VideoError(s.spec.video, f"now yields {cap} frames, the sample needs {(s.window or 0) + nf} "
                                               "(the file changed since the dataset was indexed?)")
            idx = frame_indices(clip, self.cfg, nf, s.window)
            frames = clip.read_indices(idx)
            times = [round(offset + t, 6) for t in clip.frame_times(idx)]
        except VideoError as e:
            self._drop_reader(s.spec.video, side)
            raise DataError(f"{s.spec.source}: {e}") from None
        finally:
            if reader is not None and self.cfg.reader_cache <= 0:
                reader.close()
        if self.cfg.crop == "random" and self.cfg.resize == "cover_crop":
            off = tuple(seeded_rng(self.cfg.seed, epoch, i, 2).random(2).tolist())
        else:
            off = (0.5, 0.5)
        video = frames_to_tensor(frames, out_h, out_w, self.cfg.resize, off)
        caption = self.caption_for(i, epoch)
        return {
            "video": video, "caption": caption, "bucket": s.bucket, "source": s.spec.source,
            "video_path": s.spec.video, "frame_times": times, "index": i, "epoch": epoch,
            "position": None if step is None else (epoch, step + 1),
            "caption_dropped": caption == "" and s.spec.caption != "",
        }

    # -- readers --------------------------------------------------------------------------------

    def _cache(self) -> OrderedDict:
        cache = getattr(self._local, "readers", None)
        if cache is None:
            cache = self._local.readers = OrderedDict()
        return cache

    def _reader(self, path: str, side: int | None) -> VideoReader:
        cache = self._cache()
        key = (path, side)
        reader = cache.get(key)
        if reader is not None:
            cache.move_to_end(key)
            return reader
        reader = open_video(path, backend=self.cfg.video_backend, max_side=side)
        if self.cfg.reader_cache <= 0:
            return reader  # not kept: the caller closes it
        cache[key] = reader
        while len(cache) > self.cfg.reader_cache:
            _, old = cache.popitem(last=False)
            old.close()
        return reader

    def _drop_reader(self, path: str, side: int | None) -> None:
        reader = self._cache().pop((path, side), None)
        if reader is not None:
            reader.close()

    def close(self) -> None:
        """Close the readers this thread keeps open."""
        cache = self._cache()
        while cache:
            cache.popitem()[1].close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local", None)  # open readers stay with the process that opened them
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch of one bucket: ``video`` (B, C, F, H, W); the rest as lists (``bucket`` and
    ``position`` once: the batch's bucket and, when drawn by a BucketBatchSampler, the position after it)."""
    if not batch:
        raise ValueError("empty batch")
    buckets = {tuple(b["bucket"]) for b in batch}
    if len(buckets) > 1:
        raise ValueError(f"batch mixes buckets {sorted(buckets)}; draw batches with BucketBatchSampler")
    positions = [b.get("position") for b in batch]
    return {
        "video": torch.stack([b["video"] for b in batch]),
        "caption": [b["caption"] for b in batch],
        "bucket": batch[0]["bucket"],
        "source": [b["source"] for b in batch],
        "video_path": [b["video_path"] for b in batch],
        "frame_times": [b["frame_times"] for b in batch],
        "index": [b["index"] for b in batch],
        "position": max(positions) if all(p is not None for p in positions) else None,
    }
