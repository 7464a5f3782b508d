"""The on-disk layout of a latent cache folder (see :mod:`t2v.cache`): its file names,
``cache.json`` (what the cache is keyed on, and whether it is complete), ``index.jsonl`` and the
safetensors shards (crash-safe writes, reading back only what is really there), and how
conditioning tensors are stored without their trailing zeros.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from densecap.config import flatten_dict
from densecap.errors import CaptionerError
from densecap.files import normal_mode, write_json_atomic
from densecap.jsonl import iter_jsonl

log = logging.getLogger("t2v.cache")  # one logger name for the whole cache, as before the split

CACHE_FORMAT = 1  # bump when the layout or the meaning of a stored tensor changes
CACHE_FILE = "cache.json"
INDEX_FILE = "index.jsonl"
ERRORS_FILE = "errors.jsonl"
EMPTY_FILE = "empty_prompt.safetensors"
SHARDS_DIR = "shards"
LOCK_FILE = ".prepare.lock"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")


class CacheError(CaptionerError):
    """A latent cache folder is missing, malformed, in use, or was made for another model or data."""


# ----------------------------------------------------------------------------------------------
# cache.json


def write_cache_json(root: Path, key: str, identity: dict, created: float, *, complete: bool,
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


def read_cache_json(root: Path) -> dict[str, Any]:
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


def _holds_nothing(root: Path) -> bool:
    """No shard file and no index line: nothing was cached here yet."""
    if any((root / SHARDS_DIR).glob("shard-*.safetensors")):
        return False
    index = root / INDEX_FILE
    return not index.exists() or not index.read_bytes().strip()


def check_identity(root: Path, identity: dict[str, Any], key: str) -> dict[str, Any] | None:
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


def _differences(old: dict, new: dict) -> list[str]:
    a, b = flatten_dict(old), flatten_dict(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            out.append(f"{k}: {json.dumps(a.get(k, '<unset>'))} then, {json.dumps(b.get(k, '<unset>'))} now")
    return out


# ----------------------------------------------------------------------------------------------
# index and shards


def shard_path(root: Path, name: str) -> Path:
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


def read_index(root: Path) -> tuple[list[dict[str, Any]], int]:
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
            headers[shard] = _shard_tensor_names(shard_path(root, shard))
        names = headers[shard]
        if names is None or any(t not in names for t in _entry_tensors(entry)):
            dropped += 1
            continue
        latest.pop(entry["key"], None)
        latest[entry["key"]] = entry
    return list(latest.values()), dropped


def trim_zeros(t: torch.Tensor) -> torch.Tensor:
    """Drop trailing all-zero (all-False) positions along dim 0, keeping at least one."""
    if t.ndim == 0 or t.shape[0] <= 1:
        return t
    nonzero = t.reshape(t.shape[0], -1).ne(0).any(dim=1)
    idx = torch.nonzero(nonzero).flatten()
    n = int(idx[-1]) + 1 if idx.numel() else 1
    return t[:n]


def pad_zeros(t: torch.Tensor, length: int) -> torch.Tensor:
    """Pad ``t`` with zeros along dim 0 to ``length`` (undoes :func:`trim_zeros`)."""
    if t.shape[0] >= length:
        return t
    pad = torch.zeros((length - t.shape[0], *t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=0)


def to_store(t: torch.Tensor, store: torch.dtype) -> torch.Tensor:
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


def save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
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


def write_index_atomic(path: Path, entries: Sequence[dict[str, Any]]) -> None:
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    write_json_atomic(path, text)


def clean_shards(root: Path, referenced: set[str]) -> None:
    """Remove temporary files of killed writers and shard files no index line refers to (we hold
    the folder's lock, so nobody else is writing)."""
    folder = root / SHARDS_DIR
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.endswith(".tmp") or (_SHARD_RE.match(p.name) and p.name not in referenced):
            p.unlink(missing_ok=True)


def next_shard_number(root: Path) -> int:
    """One past every shard number in use: on disk, or named by any index line (valid or not), so a
    new shard never takes the name of one that stale index lines still point at."""
    folder = root / SHARDS_DIR
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    index = root / INDEX_FILE
    if index.exists():
        names += [str(e.get("shard")) for e in iter_jsonl(index) if isinstance(e, dict)]
    nums = [int(m.group(1)) for n in names if (m := _SHARD_RE.match(n))]
    return max(nums, default=0) + 1
