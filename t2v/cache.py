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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from densecap.config import StrictModel, flatten_dict
from densecap.errors import CaptionerError
from densecap.files import lock_output, normal_mode, write_json_atomic
from densecap.jsonl import JsonlAppender, iter_jsonl, repair_partial_tail
from densecap.paths import check_output_dir
from t2v.data import (
    Bucket,
    DataConfig,
    DataError,
    SampleRef,
    VideoTextDataset,
    read_samples,
)

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

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the layout or the meaning of a stored tensor changes
CACHE_FILE = "cache.json"
INDEX_FILE = "index.jsonl"
ERRORS_FILE = "errors.jsonl"
EMPTY_FILE = "empty_prompt.safetensors"
SHARDS_DIR = "shards"
LOCK_FILE = ".prepare.lock"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CacheError(CaptionerError):
    """A latent cache folder is missing, malformed, in use, or was made for another model or data."""


# ----------------------------------------------------------------------------------------------
# config


class ModelRef(StrictModel):
    """The model whose VAE and text encoder make the cache."""

    family: str = Field("wan", description="a registered model family (t2v.families)")
    id: str | None = Field(None, description="hub id, local folder or tiny://NAME; default: the family's default")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="text encoder (and VAE) dtype")
    vae_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="VAE dtype; default: dtype")

    @field_validator("family")
    @classmethod
    def _registered_family(cls, v):
        from t2v.families import check_family

        return v if v is None else check_family(v)

    def resolved_id(self) -> str:
        from t2v.families import get_family

        return self.id or get_family(self.family).default_model_id


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


def _norm_model_id(model_id: str) -> str:
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
            "id": _norm_model_id(m.resolved_id()),
            "revision": m.revision,
            "dtype": m.dtype,
            "vae_dtype": m.vae_dtype or m.dtype,
        },
        "data": data,
        "store_dtype": cfg.store_dtype,
    }


def _key_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]




def _differences(old: dict, new: dict) -> list[str]:
    a, b = flatten_dict(old), flatten_dict(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            out.append(f"{k}: {json.dumps(a.get(k, '<unset>'))} then, {json.dumps(b.get(k, '<unset>'))} now")
    return out


def _entry_key(sample_key: str, caption: str) -> str:
    return f"{sample_key}-{hashlib.sha256(caption.encode('utf-8')).hexdigest()[:8]}"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


# ----------------------------------------------------------------------------------------------
# index and shards


def _shard_path(root: Path, name: str) -> Path:
    return root / SHARDS_DIR / name


def _shard_tensor_names(path: Path) -> set[str] | None:
    """The tensor names in a shard's header, or None when the file is missing or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except Exception as e:  # noqa: BLE001 -- a truncated or corrupt file: treat it as missing
        log.warning("%s: unreadable shard (%s); its samples are redone", path, e)
        return None


def _entry_tensors(entry: dict[str, Any]) -> list[str]:
    key = entry["key"]
    return [f"{key}.mean", f"{key}.logvar", *(f"{key}.cond.{n}" for n in entry.get("cond_len", {}))]


def _read_index(root: Path) -> tuple[list[dict[str, Any]], int]:
    """The valid index entries (last line per key wins), and how many lines were dropped because
    their shard or tensors are missing. A torn last line is ignored."""
    path = root / INDEX_FILE
    if not path.exists():
        return [], 0
    headers: dict[str, set[str] | None] = {}
    latest: dict[str, dict[str, Any]] = {}
    dropped = 0
    try:
        lines = list(iter_jsonl(path))
    except CaptionerError as e:
        raise CacheError(f"{e}; the index is damaged (delete the cache folder to start over)") from None
    for entry in lines:
        if not isinstance(entry, dict) or "key" not in entry or "shard" not in entry:
            dropped += 1
            continue
        shard = entry["shard"]
        if shard not in headers:
            headers[shard] = _shard_tensor_names(_shard_path(root, shard))
        names = headers[shard]
        if names is None or any(t not in names for t in _entry_tensors(entry)):
            dropped += 1
            continue
        latest.pop(entry["key"], None)
        latest[entry["key"]] = entry
    return list(latest.values()), dropped


def _trim(t: torch.Tensor) -> torch.Tensor:
    """Drop trailing all-zero (all-False) positions along dim 0, keeping at least one."""
    if t.ndim == 0 or t.shape[0] <= 1:
        return t
    nonzero = t.reshape(t.shape[0], -1).ne(0).any(dim=1)
    idx = torch.nonzero(nonzero).flatten()
    n = int(idx[-1]) + 1 if idx.numel() else 1
    return t[:n]


def _untrim(t: torch.Tensor, length: int) -> torch.Tensor:
    if t.shape[0] >= length:
        return t
    pad = torch.zeros((length - t.shape[0], *t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=0)


def _to_store(t: torch.Tensor, store: torch.dtype) -> torch.Tensor:
    t = t.detach().to("cpu")
    if t.is_floating_point():
        t = t.to(store)
    return t.contiguous().clone()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        normal_mode(tmp)  # mkstemp and save_file make owner-only files
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_index_atomic(path: Path, entries: Sequence[dict[str, Any]]) -> None:
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    write_json_atomic(path, text)


# ----------------------------------------------------------------------------------------------
# prepare


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


def _holds_nothing(root: Path) -> bool:
    """No shard file and no index line: nothing was cached here yet."""
    if any((root / SHARDS_DIR).glob("shard-*.safetensors")):
        return False
    index = root / INDEX_FILE
    return not index.exists() or not index.read_bytes().strip()


def _check_identity(root: Path, identity: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The folder's cache.json when it matches ``key``; None for a new folder; raises otherwise."""
    path = root / CACHE_FILE
    if not path.exists():
        others = sorted(p.name for p in root.iterdir() if p.name != LOCK_FILE)
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise CacheError(f"{root} is not empty ({shown}) and holds no {CACHE_FILE}: not a latent cache; "
                             "give an empty or new --out folder")
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(f"{path}: not a readable cache description ({e})") from None
    if not isinstance(info, dict) or info.get("cache_key") != key:
        old = info.get("keyed_on", {}) if isinstance(info, dict) else {}
        diffs = _differences(old, identity)
        if _holds_nothing(root):  # a first run that stopped before caching anything: take the folder over
            log.info("%s: replacing an empty cache made with other settings (%s)", root, "; ".join(diffs))
            for name in (INDEX_FILE, ERRORS_FILE, EMPTY_FILE):
                (root / name).unlink(missing_ok=True)
            return None
        raise CacheError(
            f"{root} holds a latent cache made with different settings "
            f"({'; '.join(diffs) or 'the cache key differs'}); adding to it would mix latents made two ways. "
            "Use another --out folder, or the original settings."
        )
    return info


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
    target = cache_dir if cache_dir is not None else cfg.cache_dir
    if target is None:
        raise CacheError("no cache folder: give --out DIR (or cache_dir in the config)")
    root = check_output_dir(target)
    spec = get_family(cfg.model.family)
    for f, h, w in cfg.data.bucket_list():
        try:
            spec.check_shape(f, h, w)
        except ValueError as e:
            raise CacheError(f"data.buckets: ({f}, {h}, {w}): {e}") from None
    if cfg.data.crop == "random":
        say("note: data.crop is 'random': the cache keeps one crop per sample (epoch 0's)")
    identity = cache_identity(cfg)
    key = _key_of(identity)
    root.mkdir(parents=True, exist_ok=True)
    lock = lock_output(root, "t2v prepare", root / LOCK_FILE)  # one prepare run per cache folder
    try:
        info = _check_identity(root, identity, key)
        ds = VideoTextDataset(read_samples(cfg.data.path), cfg.data)  # raises DataError when empty
        created = info.get("created") if info else time.time()
        _write_cache_json(root, key, identity, created, complete=False, samples=None)
        result = PrepareResult(cache_dir=root, total=len(ds))
        errors_path = root / ERRORS_FILE
        errors_path.unlink(missing_ok=True)  # errors.jsonl reports the latest run
        errors = JsonlAppender(errors_path)

        by_source = {sp.source: sp for sp in ds.specs}
        failed_clips: set[tuple] = set()  # (video, start, end, caption) of clips that failed this run

        def fail(source: str, video: str | None, stage: str, reason: str) -> None:
            line = {"source": source, "video": video, "stage": stage, "reason": reason, "time": round(time.time(), 3)}
            errors.append(line)
            result.errors.append(line)
            result.failed += 1
            listed = by_source.get(source)
            if listed is not None:
                failed_clips.add((listed.video, listed.start, listed.end, listed.caption))

        try:
            for source, reason in ds.skipped:
                listed = by_source.get(source)
                fail(source, listed.video if listed is not None else None, "index", reason)

            # what is cached already
            repair_partial_tail(root / INDEX_FILE)
            entries, dropped = _read_index(root)
            if dropped:
                say(f"{dropped} index lines point at missing shards or tensors: their samples are redone")
            have = {e["key"]: e for e in entries}
            _clean_shards(root, {e["shard"] for e in entries})

            keys = [_entry_key(ds.sample_key(i), ds.samples[i].spec.caption) for i in range(len(ds))]
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
            need_empty = cfg.empty_prompt and not (root / EMPTY_FILE).exists()
            if pending or need_empty:
                say(f"{len(pending)} of {len(seen)} samples to encode ({result.present} already cached)")
                c = components
                if c is None:
                    device = resolve_device(cfg.device)
                    say(f"loading the {cfg.model.family} VAE and text encoder of {cfg.model.resolved_id()} on {device}")
                    c = spec.load_components(
                        cfg.model.resolved_id(),
                        revision=cfg.model.revision,
                        dtype=_DTYPES[cfg.model.dtype],
                        vae_dtype=_DTYPES[cfg.model.vae_dtype] if cfg.model.vae_dtype else None,
                        device=device,
                        text_encoder=True,
                        vae=True,
                        transformer=False,
                    )
                store = _DTYPES[cfg.store_dtype]
                if need_empty:
                    cond = spec.encode_prompts(c, [""])
                    _save_atomic({n: _to_store(t[0], store) for n, t in cond.items()}, root / EMPTY_FILE,
                                 {"cache_key": key, "format": str(CACHE_FORMAT)})
                    result.empty_prompt = True
                if pending:
                    _encode_pending(cfg, spec, c, ds, keys, pending, root, key, store, result, fail, say)
            entries, _ = _read_index(root)
        finally:
            errors.close()
            _close_readers(ds)

        # the final index: dataset order, current samples only. Entries of a clip that failed this
        # run (unreadable now: maybe a mount that is away) are kept, after the others, not thrown away.
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
            _write_index_atomic(index_path, ordered)
        _clean_shards(root, {e["shard"] for e in ordered})
        complete = result.failed == 0 and all(k in placed for k in seen)
        _write_cache_json(root, key, identity, created, complete=complete, samples=len(ordered),
                          failed=result.failed, empty_prompt=(root / EMPTY_FILE).exists())
    finally:
        lock.release()
    result.seconds = time.perf_counter() - t0
    return result


def _close_readers(ds: VideoTextDataset) -> None:
    """Close the video readers this thread kept open, and collect what they leave behind.

    Needed before anything forks (a training DataLoader with workers): a PyAV container that is
    garbage at fork time is freed by the child's garbage collector, and freeing its decoder waits
    for frame threads that do not exist in the child, hanging the worker for good.
    """
    import gc

    ds.close()
    gc.collect()


def _write_cache_json(root: Path, key: str, identity: dict, created: float, *, complete: bool,
                      samples: int | None, failed: int | None = None, empty_prompt: bool | None = None) -> None:
    info = {
        "cache_key": key,
        "keyed_on": identity,
        "family": identity["model"]["family"],
        "model_id": identity["model"]["id"],
        "created": created,
        "updated": time.time(),
        "complete": complete,
        "samples": samples,
        "failed": failed,
        "empty_prompt": empty_prompt,
    }
    write_json_atomic(root / CACHE_FILE, json.dumps(info, indent=2) + "\n")


def _clean_shards(root: Path, referenced: set[str]) -> None:
    """Remove temporary files of killed writers and shard files no index line refers to (we hold
    the folder's lock, so nobody else is writing)."""
    folder = root / SHARDS_DIR
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.endswith(".tmp") or (_SHARD_RE.match(p.name) and p.name not in referenced):
            p.unlink(missing_ok=True)


def _next_shard_number(root: Path) -> int:
    """One past every shard number in use: on disk, or named by any index line (valid or not), so a
    new shard never takes the name of one that stale index lines still point at."""
    folder = root / SHARDS_DIR
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    index = root / INDEX_FILE
    if index.exists():
        names += [str(e.get("shard")) for e in iter_jsonl(index) if isinstance(e, dict)]
    nums = [int(m.group(1)) for n in names if (m := _SHARD_RE.match(n))]
    return max(nums, default=0) + 1


def _encode_pending(cfg, spec, c, ds, keys, pending, root, cache_key, store, result, fail, say) -> None:
    # batches of one bucket, in dataset order within each bucket
    groups: dict[Bucket, list[int]] = {}
    for i in pending:
        groups.setdefault(ds.samples[i].bucket, []).append(i)
    batches = [idx[s:s + cfg.batch_size] for idx in groups.values() for s in range(0, len(idx), cfg.batch_size)]
    if cfg.decode_workers:
        import gc

        gc.collect()  # no garbage video readers for the forked workers to free (see _close_readers)
    loader = torch.utils.data.DataLoader(
        _SafeItems(ds), batch_sampler=batches, collate_fn=_list_of, num_workers=cfg.decode_workers,
        prefetch_factor=2 if cfg.decode_workers else None, persistent_workers=False,
    )
    shard_no = _next_shard_number(root)
    tensors: dict[str, torch.Tensor] = {}
    lines: list[dict[str, Any]] = []
    nbytes = 0
    max_bytes = cfg.shard_max_mb * 2**20

    def flush() -> None:
        nonlocal shard_no, tensors, lines, nbytes
        if not lines:
            return
        name = f"shard-{shard_no:05d}.safetensors"
        for line in lines:
            line["shard"] = name
        _save_atomic(tensors, _shard_path(root, name), {"cache_key": cache_key, "format": str(CACHE_FORMAT)})
        with JsonlAppender(root / INDEX_FILE) as index:
            for line in lines:
                index.append(line)
        result.shards_written += 1
        result.cached += len(lines)
        say(f"{name}: {len(lines)} samples ({result.cached} of {len(pending)} done)")
        shard_no += 1
        tensors, lines, nbytes = {}, [], 0

    for items in loader:
        good = []
        for it in items:
            s = ds.samples[it["index"]]
            if "error" in it:
                fail(s.spec.source, s.spec.video, "decode", it["error"])
            else:
                good.append(it)
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
            k = keys[i]
            tensors[f"{k}.mean"] = _to_store(mean, store)
            tensors[f"{k}.logvar"] = _to_store(logvar, store)
            cond_len = {}
            for n, t in cond.items():
                full = t[b]
                cond_len[n] = int(full.shape[0]) if full.ndim else 0
                tensors[f"{k}.cond.{n}"] = _to_store(_trim(full), store)
            nbytes += sum(tensors[name].numel() * tensors[name].element_size()
                          for name in (f"{k}.mean", f"{k}.logvar", *(f"{k}.cond.{n}" for n in cond)))
            lines.append({
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
                "frame_times": it["frame_times"],
                "latent_shape": list(mean.shape),
                "cond_len": cond_len,
            })
            if len(lines) >= cfg.shard_size or nbytes >= max_bytes:
                flush()
    flush()


# ----------------------------------------------------------------------------------------------
# reading


def _read_cache_json(root: Path) -> dict[str, Any]:
    path = root / CACHE_FILE
    if not path.is_file():
        raise CacheError(f"{root}: not a latent cache (no {CACHE_FILE}); make one with `t2v prepare`")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(f"{path}: not a readable cache description ({e})") from None
    if not isinstance(info, dict) or "keyed_on" not in info:
        raise CacheError(f"{path}: not a cache description this version wrote")
    fmt = info["keyed_on"].get("format")
    if fmt != CACHE_FORMAT:
        raise CacheError(f"{root}: cache format {fmt}, this version reads format {CACHE_FORMAT}; prepare it again")
    return info


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) % 2**64 for p in parts]))


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
        self.info = _read_cache_json(self.root)
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
        self.entries, self.missing = _read_index(self.root)
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
        if model_id is not None and _norm_model_id(model_id) != self.model_id:
            raise CacheError(f"{self.root}: the cache was made with {self.model_id}; the trainer uses "
                             f"{_norm_model_id(model_id)}: their VAE and text encoder may differ, prepare a cache "
                             "for this model")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def caption_dropped(self, i: int, epoch: int | None = None) -> bool:
        p = self.caption_dropout
        if p <= 0.0:
            return False
        e = self.epoch if epoch is None else epoch
        return p >= 1.0 or _rng(self.seed, e, i, 1).random() < p

    # -- tensors --------------------------------------------------------------------------------

    def _handle(self, shard: str):
        from safetensors import safe_open

        if self._pid != os.getpid():  # a forked worker: the parent's handles are not ours
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(shard)
        if h is None:
            path = _shard_path(self.root, shard)
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
        if isinstance(ref, tuple):
            i, epoch = int(ref[0]), int(ref[1])
            step = int(ref[2]) if len(ref) > 2 else None
        else:
            i, epoch, step = int(ref), self.epoch, None
        n = len(self.entries)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range ({n} samples)")
        i %= n
        e = self.entries[i]
        h = self._handle(e["shard"])
        k = e["key"]
        dropped = self.caption_dropped(i, epoch)
        if dropped:
            cond = self.empty_cond()
        else:
            cond = {name: _untrim(h.get_tensor(f"{k}.cond.{name}"), length)
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
            ts = [_untrim(t, longest) for t in ts]
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

