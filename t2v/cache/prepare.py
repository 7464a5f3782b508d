"""The ``t2v prepare`` pass (see :mod:`t2v.cache`): check the folder against the settings, find
the samples not cached yet, decode them (in DataLoader workers when asked), encode them with the
family's VAE and text encoder, write them shard by shard, and leave the index in dataset order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from densecap.devices import resolve_device, torch_dtype
from densecap.files import lock_output
from densecap.jsonl import JsonlAppender, repair_partial_tail
from densecap.paths import check_output_dir
from t2v.buckets import Bucket, SampleRef
from t2v.cache.config import PrepareConfig, cache_identity, entry_key, key_of
from t2v.cache.store import (
    CACHE_FORMAT,
    EMPTY_FILE,
    ERRORS_FILE,
    INDEX_FILE,
    LOCK_FILE,
    CacheError,
    check_identity,
    clean_shards,
    next_shard_number,
    read_index,
    save_atomic,
    shard_path,
    to_store,
    trim_zeros,
    write_cache_json,
    write_index_atomic,
)
from t2v.data import DataError, SampleSpec, VideoTextDataset, read_samples

log = logging.getLogger("t2v.cache")  # one logger name for the whole cache, as before the split

Say = Callable[[str], None]


@dataclass
class PrepareResult:
    """What a prepare run did."""

    cache_dir: Path
    total: int = 0  # samples in the dataset (after indexing)
    cached: int = 0  # encoded and written by this run
    present: int = 0  # already in the cache: skipped
    failed: int = 0  # clips left out (unreadable, too short, failed to decode or encode)
    stale: int = 0  # index entries dropped: no longer in the dataset
    shards_written: int = 0
    empty_prompt: bool = False  # the empty-prompt conditioning was computed by this run
    seconds: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.cached} cached, {self.present} already present (skipped), {self.failed} failed, "
                f"{self.total} samples in the dataset")


class _SafeItems(torch.utils.data.Dataset):
    """Dataset items, or ``{"error": ...}`` for a clip that fails to decode (never raises), so a
    DataLoader with workers keeps going past a bad clip."""

    def __init__(self, ds: VideoTextDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            item = self.ds[SampleRef(int(i), 0, 0)]
        except DataError as e:
            return {"index": int(i), "error": str(e)}
        except Exception as e:  # noqa: BLE001 -- a decoder failing in a way the reader does not translate
            s = self.ds.samples[int(i)].spec
            return {"index": int(i), "error": f"{s.source}: {s.video}: {type(e).__name__}: {e}"}
        return {"index": int(i), "video": item["video"], "frame_times": item["frame_times"]}


def _list_of(batch: list) -> list:
    return batch


class _Failures:
    """The clips this run could not use: each goes to ``errors.jsonl`` and into the result, and is
    remembered by (video, start, end, caption) so that the final index keeps its older entries."""

    def __init__(self, path: Path, result: PrepareResult, specs: Sequence[SampleSpec]) -> None:
        self._errors = JsonlAppender(path)
        self.result = result
        self.by_source = {sp.source: sp for sp in specs}
        self.clips: set[tuple] = set()  # (video, start, end, caption) of clips that failed this run

    def __call__(self, source: str, video: str | None, stage: str, reason: str) -> None:
        line = {"source": source, "video": video, "stage": stage, "reason": reason, "time": round(time.time(), 3)}
        self._errors.append(line)
        self.result.errors.append(line)
        self.result.failed += 1
        listed = self.by_source.get(source)
        if listed is not None:
            self.clips.add((listed.video, listed.start, listed.end, listed.caption))

    def add_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
        """The clips indexing left out (unreadable, too short), as ``(source, reason)``."""
        for source, reason in skipped:
            listed = self.by_source.get(source)
            self(source, listed.video if listed is not None else None, "index", reason)

    def close(self) -> None:
        self._errors.close()


# ----------------------------------------------------------------------------------------------
# the run


def prepare_cache(
    cfg: PrepareConfig,
    cache_dir: str | os.PathLike | None = None,
    *,
    components: Any = None,
    progress: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Encode every sample of ``cfg.data`` not yet in the cache at ``cache_dir`` (default
    ``cfg.cache_dir``) and write it; see the module doc. ``components``: already loaded
    :class:`~t2v.families.base.Components` (text encoder and VAE) to use instead of loading them.
    Bad clips are written to ``errors.jsonl`` and counted; they never stop the run. An empty
    dataset raises :class:`t2v.data.DataError`."""
    from t2v.families import get_family

    t0 = time.perf_counter()
    say = progress or (lambda msg: log.info("%s", msg))
    root = _target_folder(cfg, cache_dir)
    spec = get_family(cfg.model.family)
    _check_buckets(spec, cfg)
    if cfg.data.crop == "random":
        say("note: data.crop is 'random': the cache keeps one crop per sample (epoch 0's)")
    identity = cache_identity(cfg)
    key = key_of(identity)
    root.mkdir(parents=True, exist_ok=True)
    lock = lock_output(root, "t2v prepare", root / LOCK_FILE)  # one prepare run per cache folder
    try:
        info = check_identity(root, identity, key)
        ds = VideoTextDataset(read_samples(cfg.data.path), cfg.data)  # raises DataError when empty
        created = info.get("created") if info else time.time()
        write_cache_json(root, key, identity, created, complete=False, samples=None)
        result = PrepareResult(cache_dir=root, total=len(ds))
        errors_path = root / ERRORS_FILE
        errors_path.unlink(missing_ok=True)  # errors.jsonl reports the latest run
        fail = _Failures(errors_path, result, ds.specs)
        try:
            fail.add_skipped(ds.skipped)
            keys, seen, pending = _plan(root, ds, result, say)
            _encode(cfg, spec, components, ds, keys, pending, len(seen), root, key, result, fail, say)
            entries, _ = read_index(root)
        finally:
            fail.close()
            _close_readers(ds)
        ordered, placed = _final_index(root, keys, entries, fail.clips, result, say)
        complete = result.failed == 0 and all(k in placed for k in seen)
        write_cache_json(root, key, identity, created, complete=complete, samples=len(ordered),
                         failed=result.failed, empty_prompt=(root / EMPTY_FILE).exists())
    finally:
        lock.release()
    result.seconds = time.perf_counter() - t0
    return result


def _target_folder(cfg: PrepareConfig, cache_dir: str | os.PathLike | None) -> Path:
    target = cache_dir if cache_dir is not None else cfg.cache_dir
    if target is None:
        raise CacheError("no cache folder: give --out DIR (or cache_dir in the config)")
    return check_output_dir(target)


def _check_buckets(spec: Any, cfg: PrepareConfig) -> None:
    """Every bucket is a shape the family's VAE and transformer take."""
    for f, h, w in cfg.data.bucket_list():
        try:
            spec.check_shape(f, h, w)
        except ValueError as e:
            raise CacheError(f"data.buckets: ({f}, {h}, {w}): {e}") from None


def _plan(root: Path, ds: VideoTextDataset, result: PrepareResult, say: Say) -> tuple[list[str], set[str], list[int]]:
    """What is cached already and what is left: every sample's entry key, the distinct keys, and
    the samples to encode (the first of each key not cached yet). Repairs the index's torn tail
    and removes shard files no valid index line refers to."""
    repair_partial_tail(root / INDEX_FILE)
    entries, dropped = read_index(root)
    if dropped:
        say(f"{dropped} index lines point at missing shards or tensors: their samples are redone")
    have = {e["key"]: e for e in entries}
    clean_shards(root, {e["shard"] for e in entries})

    keys = [entry_key(ds.sample_key(i), ds.samples[i].spec.caption) for i in range(len(ds))]
    pending: list[int] = []
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if k in seen:
            continue  # the same clip listed twice with the same caption: cached once
        seen.add(k)
        if k in have:
            result.present += 1
        else:
            pending.append(i)
    return keys, seen, pending


def _encode(cfg: PrepareConfig, spec: Any, components: Any, ds: VideoTextDataset, keys: list[str],
            pending: list[int], distinct: int, root: Path, key: str, result: PrepareResult,
            fail: _Failures, say: Say) -> None:
    """Encode the pending samples and, when missing, the empty prompt; the models are loaded (unless
    given) only when there is something to encode."""
    need_empty = cfg.empty_prompt and not (root / EMPTY_FILE).exists()
    if not pending and not need_empty:
        return
    say(f"{len(pending)} of {distinct} samples to encode ({result.present} already cached)")
    c = components if components is not None else _load_components(cfg, spec, say)
    store = torch_dtype(cfg.store_dtype)
    if need_empty:
        cond = spec.encode_prompts(c, [""])
        save_atomic({n: to_store(t[0], store) for n, t in cond.items()}, root / EMPTY_FILE,
                    {"cache_key": key, "format": str(CACHE_FORMAT)})
        result.empty_prompt = True
    if pending:
        _encode_pending(cfg, spec, c, ds, keys, pending, root, key, store, result, fail, say)


def _load_components(cfg: PrepareConfig, spec: Any, say: Say) -> Any:
    """The family's VAE and text encoder (no transformer), on ``cfg.device``."""
    device = resolve_device(cfg.device)
    say(f"loading the {cfg.model.family} VAE and text encoder of {cfg.model.resolved_id()} on {device}")
    return spec.load_components(
        cfg.model.resolved_id(),
        revision=cfg.model.revision,
        dtype=torch_dtype(cfg.model.dtype),
        vae_dtype=torch_dtype(cfg.model.vae_dtype) if cfg.model.vae_dtype else None,
        device=device,
        text_encoder=True,
        vae=True,
        transformer=False,
    )


def _final_index(root: Path, keys: list[str], entries: list[dict[str, Any]], failed_clips: set[tuple],
                 result: PrepareResult, say: Say) -> tuple[list[dict[str, Any]], set[str]]:
    """Rewrite the index in dataset order, current samples only (when that changes it), and remove
    the shards nothing refers to any more; returns the entries written and their keys.

    Entries of a clip that failed this run (unreadable now: maybe a mount that is away) are kept,
    after the others, not thrown away."""
    by_key = {e["key"]: e for e in entries}
    ordered, placed = [], set()
    for k in keys:
        if k in by_key and k not in placed:
            ordered.append(by_key[k])
            placed.add(k)
    for k, e in by_key.items():
        if k not in placed and (e.get("video_path"), e.get("start"), e.get("end"), e.get("caption")) in failed_clips:
            ordered.append(e)
            placed.add(k)
    result.stale = len(by_key) - len(placed)
    if result.stale:
        say(f"{result.stale} cached samples are no longer in the dataset: dropped from the index")
    index_path = root / INDEX_FILE
    current = index_path.read_text(encoding="utf-8") if index_path.exists() else ""
    wanted = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in ordered)
    if current != wanted:
        write_index_atomic(index_path, ordered)
    clean_shards(root, {e["shard"] for e in ordered})
    return ordered, placed


def _close_readers(ds: VideoTextDataset) -> None:
    """Close the video readers this thread kept open, and collect what they leave behind.

    Needed before anything forks (a training DataLoader with workers): a PyAV container that is
    garbage at fork time is freed by the child's garbage collector, and freeing its decoder waits
    for frame threads that do not exist in the child, hanging the worker for good.
    """
    import gc

    ds.close()
    gc.collect()


# ----------------------------------------------------------------------------------------------
# encoding


def _encode_pending(cfg: PrepareConfig, spec: Any, c: Any, ds: VideoTextDataset, keys: list[str],
                    pending: list[int], root: Path, cache_key: str, store: torch.dtype,
                    result: PrepareResult, fail: _Failures, say: Say) -> None:
    """Decode, encode and write the ``pending`` samples, in batches of one bucket."""
    loader = _decode_loader(cfg, ds, pending)
    shards = _ShardWriter(cfg, root, cache_key, result, say, len(pending))
    for items in loader:
        good = _decoded(ds, items, fail)
        if not good:
            continue
        video = torch.stack([it["video"] for it in good])
        captions = [ds.samples[it["index"]].spec.caption for it in good]
        dist = spec.encode_video(c, video)
        cond = spec.encode_prompts(c, captions)
        for b, it in enumerate(good):
            i = it["index"]
            s = ds.samples[i]
            mean, logvar = dist["mean"][b], dist["logvar"][b]
            if not (torch.isfinite(mean).all() and torch.isfinite(logvar).all()):
                fail(s.spec.source, s.spec.video, "encode", "the VAE returned non-finite values for this clip")
                continue
            tensors, cond_len = _sample_tensors(keys[i], mean, logvar, {n: t[b] for n, t in cond.items()}, store)
            shards.add(tensors, _index_line(ds, i, keys[i], it["frame_times"], mean, cond_len))
    shards.flush()


def _decode_loader(cfg: PrepareConfig, ds: VideoTextDataset, pending: list[int]) -> torch.utils.data.DataLoader:
    """Batches of one bucket, in dataset order within each bucket, decoded by ``cfg.decode_workers``
    workers (none: in this process)."""
    groups: dict[Bucket, list[int]] = {}
    for i in pending:
        groups.setdefault(ds.samples[i].bucket, []).append(i)
    batches = [idx[s:s + cfg.batch_size] for idx in groups.values() for s in range(0, len(idx), cfg.batch_size)]
    if cfg.decode_workers:
        import gc

        gc.collect()  # no garbage video readers for the forked workers to free (see _close_readers)
    return torch.utils.data.DataLoader(
        _SafeItems(ds), batch_sampler=batches, collate_fn=_list_of, num_workers=cfg.decode_workers,
        prefetch_factor=2 if cfg.decode_workers else None, persistent_workers=False,
    )


def _decoded(ds: VideoTextDataset, items: list[dict[str, Any]], fail: _Failures) -> list[dict[str, Any]]:
    """The items that decoded; the others are reported as failed (stage "decode")."""
    good = []
    for it in items:
        s = ds.samples[it["index"]]
        if "error" in it:
            fail(s.spec.source, s.spec.video, "decode", it["error"])
        else:
            good.append(it)
    return good


def _sample_tensors(k: str, mean: torch.Tensor, logvar: torch.Tensor, cond: dict[str, torch.Tensor],
                    store: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """One sample's tensors as stored (named ``<key>.mean``, ``<key>.logvar``, ``<key>.cond.<name>``;
    conditioning without its trailing zeros), and each conditioning tensor's full length."""
    tensors = {f"{k}.mean": to_store(mean, store), f"{k}.logvar": to_store(logvar, store)}
    cond_len = {}
    for n, full in cond.items():
        cond_len[n] = int(full.shape[0]) if full.ndim else 0
        tensors[f"{k}.cond.{n}"] = to_store(trim_zeros(full), store)
    return tensors, cond_len


def _index_line(ds: VideoTextDataset, i: int, k: str, frame_times: list[float], mean: torch.Tensor,
                cond_len: dict[str, int]) -> dict[str, Any]:
    """Sample ``i``'s index line; its shard is filled in when the shard is written."""
    s = ds.samples[i]
    return {
        "key": k,
        "shard": None,
        "sample_key": ds.sample_key(i),
        "caption": s.spec.caption,
        "bucket": list(s.bucket),
        "source": s.spec.source,
        "video_path": s.spec.video,
        "start": s.spec.start,
        "end": s.spec.end,
        "window": s.window,
        "frame_times": frame_times,
        "latent_shape": list(mean.shape),
        "cond_len": cond_len,
    }


class _ShardWriter:
    """Collects encoded samples and writes them out a shard at a time, once ``shard_size`` samples
    or ``shard_max_mb`` of tensors are pending: the shard file first (atomically), then its index
    lines, so an index line never points at a shard that is not there."""

    def __init__(self, cfg: PrepareConfig, root: Path, cache_key: str, result: PrepareResult, say: Say,
                 pending: int) -> None:
        self.root, self.cache_key, self.result, self.say, self.pending = root, cache_key, result, say, pending
        self.shard_size = cfg.shard_size
        self.max_bytes = cfg.shard_max_mb * 2**20
        self.shard_no = next_shard_number(root)
        self.tensors: dict[str, torch.Tensor] = {}
        self.lines: list[dict[str, Any]] = []
        self.nbytes = 0

    def add(self, tensors: dict[str, torch.Tensor], line: dict[str, Any]) -> None:
        self.tensors.update(tensors)
        self.nbytes += sum(t.numel() * t.element_size() for t in tensors.values())
        self.lines.append(line)
        if len(self.lines) >= self.shard_size or self.nbytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        name = f"shard-{self.shard_no:05d}.safetensors"
        for line in self.lines:
            line["shard"] = name
        save_atomic(self.tensors, shard_path(self.root, name),
                    {"cache_key": self.cache_key, "format": str(CACHE_FORMAT)})
        with JsonlAppender(self.root / INDEX_FILE) as index:
            for line in self.lines:
                index.append(line)
        self.result.shards_written += 1
        self.result.cached += len(self.lines)
        self.say(f"{name}: {len(self.lines)} samples ({self.result.cached} of {self.pending} done)")
        self.shard_no += 1
        self.tensors, self.lines, self.nbytes = {}, [], 0
