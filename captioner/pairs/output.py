"""The PAIRS file of ``captioner pairs`` and its sidecars (``.meta.json``, ``.errors.jsonl``): one run
at a time, resumed only with the same settings, written durably as answers arrive."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from captioner.pairs.config import PairsConfig
from captioner.pairs.reading import CaptionItem, iter_numbered
from densecap.errors import CaptionerError, ConfigError
from densecap.files import lock_output, write_json_atomic

__all__ = ["META_FORMAT", "META_FORMAT_VERSION", "PairsOutput", "meta_settings", "sidecar_paths"]

META_FORMAT = "densecap-pairs"
META_FORMAT_VERSION = 1


def sidecar_paths(out: str | Path) -> tuple[Path, Path]:
    """``(meta, errors)`` files of a pairs file: ``pairs.jsonl`` -> ``pairs.meta.json``, ``pairs.errors.jsonl``."""
    out = Path(out)
    stem = out.name.removesuffix(".jsonl")
    return out.with_name(stem + ".meta.json"), out.with_name(stem + ".errors.jsonl")


def meta_settings(cfg: PairsConfig, prompts: dict[str, Any]) -> dict[str, Any]:
    """What shapes the pairs: a PAIRS file is only resumed with the same values."""
    w = cfg.writer
    return {
        "writer_model": w.model,
        "writer_revision": getattr(w, "revision", None),
        "temperature": w.temperature,
        "top_p": w.top_p,
        "seed": cfg.seed,
        "prompts": prompts["version"],
        "min_words": cfg.min_words,
        "max_words": cfg.max_words,
        "reject_first_sentence": cfg.reject_first_sentence,
    }


class PairsOutput:
    """A PAIRS file and its sidecars: settings check, what is done, durable appends."""

    def __init__(self, path: str | Path, cfg: PairsConfig, prompts: dict[str, Any]):
        from densecap.jsonl import repair_partial_tail

        self.path = Path(path)
        if self.path.is_dir():
            raise CaptionerError(f"{self.path}: is a folder; --out names the pairs file (e.g. pairs.jsonl)")
        self.meta_path, self.errors_path = sidecar_paths(self.path)
        self.fsync = cfg.fsync
        self.settings = meta_settings(cfg, prompts)
        self._pairs = None
        self._errors = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one run per PAIRS file: `.PAIRS.lock` beside it, held until close()
        self._lock = lock_output(self.path, "captioner pairs", self.path.with_name(f".{self.path.name}.lock"))
        try:
            self.done = self._ids(self.path)  # an unfinished last line is not counted: it is cut below
            errored = self._ids(self.errors_path)
            self._check_meta(cfg, prompts, has_data=bool(self.done or errored))
            repair_partial_tail(self.path)  # only once the file is known to be ours
            repair_partial_tail(self.errors_path)
            self.path.touch()  # PAIRS exists (maybe empty) once a run has started
            self.failed = errored - self.done
        except BaseException:
            self._lock.release()
            raise

    @staticmethod
    def _ids(path: Path) -> set[str]:
        if not path.exists():
            return set()
        ids: set[str] = set()
        for n, obj in iter_numbered(path, read_unterminated=False):
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                raise CaptionerError(f"{path}:{n}: a line without an 'id'; is this a file written by `captioner pairs`?")
            ids.add(obj["id"])
        return ids

    def _check_meta(self, cfg: PairsConfig, prompts: dict[str, Any], has_data: bool) -> None:
        if self.meta_path.exists():
            try:
                meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CaptionerError(f"{self.meta_path}: not valid JSON ({exc}); delete it only if {self.path} is empty") from None
            if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
                raise CaptionerError(f"{self.meta_path}: not a `captioner pairs` meta file")
            before = meta.get("settings") or {}
            changed = [k for k in sorted(set(before) | set(self.settings)) if before.get(k) != self.settings.get(k)]
            if not changed:
                return
            if has_data:
                detail = ", ".join(f"{k}: {before.get(k)!r} -> {self.settings.get(k)!r}" for k in changed)
                raise ConfigError(
                    f"{self.path} holds pairs made with different settings (changed: {detail}); resuming would mix "
                    "pairs made two ways. Use a new --out file, or the original settings."
                )
        elif has_data:
            raise CaptionerError(
                f"{self.path} holds pairs but has no {self.meta_path.name}; it was not written by `captioner pairs` "
                "(or the meta file was deleted): use a new --out file"
            )
        meta = {
            "format": META_FORMAT,
            "format_version": META_FORMAT_VERSION,
            "settings": self.settings,
            "writer": cfg.writer_config().model_dump(mode="json"),
            "prompt_file": prompts.get("_path"),
            "max_new_tokens": cfg.max_new_tokens,
            "max_retries": cfg.max_retries,
            "created": round(time.time(), 3),
        }
        write_json_atomic(self.meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    def _appender(self, which: str):
        from densecap.jsonl import JsonlAppender

        if which == "pairs":
            if self._pairs is None:
                self._pairs = JsonlAppender(self.path, fsync=self.fsync)
            return self._pairs
        if self._errors is None:
            self._errors = JsonlAppender(self.errors_path, fsync=self.fsync)
        return self._errors

    def write_pair(self, item: CaptionItem, prompt: str, attempts: int, model: dict) -> None:
        self._appender("pairs").append(
            {"id": item.id, "prompt": prompt, "caption": item.caption, "source": item.source, "attempts": attempts, "model": model}
        )
        self.done.add(item.id)
        self.failed.discard(item.id)

    def write_error(self, item: CaptionItem, reasons: list[str], answers: list[str]) -> None:
        self._appender("errors").append(
            {
                "id": item.id,
                "where": item.where,
                "source": item.source,
                "caption": item.caption,
                "reason": reasons[-1] if reasons else "",
                "attempts": len(answers),
                "reasons": reasons,
                "last_answer": answers[-1][:1000] if answers else "",
            }
        )
        self.failed.add(item.id)

    def close(self) -> None:
        try:
            for app in (self._pairs, self._errors):
                if app is not None:
                    app.close()
        finally:
            self._lock.release()

    def __enter__(self) -> PairsOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
