"""Where a training batch's VAE posterior and text conditioning come from: videos decoded and
encoded on the fly by the frozen encoders (:class:`VideoSource`, ``data.path``), or a latent cache
made by ``t2v prepare`` (:class:`CacheSource`, ``data.cache_dir``: the encoders are not loaded)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from t2v.train_config import TrainConfig

__all__ = ["CacheSource", "VideoSource", "device_of", "make_source"]

log = logging.getLogger("t2v.train")


def make_source(cfg: TrainConfig) -> "VideoSource | CacheSource":
    """The source ``cfg.data`` names: a latent cache when ``cache_dir`` is set, else the videos."""
    return CacheSource(cfg) if cfg.data.cache_dir is not None else VideoSource(cfg)


class VideoSource:
    """Videos decoded and encoded on the fly by the frozen VAE and text encoder."""

    needs_encoders = True

    def __init__(self, cfg: TrainConfig) -> None:
        from t2v.data import VideoTextDataset, collate, read_samples

        self.cfg = cfg
        data_cfg = cfg.data
        self.dataset = VideoTextDataset(read_samples(data_cfg.path), data_cfg)
        self.collate = collate
        if self.dataset.skipped:
            log.warning("%d clips skipped; first: %s: %s", len(self.dataset.skipped), *self.dataset.skipped[0])

    def buckets(self) -> dict[tuple[int, int, int], int]:
        return self.dataset.bucket_counts()

    def frame_rate(self) -> float | None:
        return self.cfg.data.fps

    def describe(self) -> dict[str, Any]:
        return {"source": "videos (encoded on the fly)", "path": str(Path(self.cfg.data.path).expanduser().resolve()),
                "num_samples": len(self.dataset), "skipped": len(self.dataset.skipped),
                "buckets": {"x".join(map(str, b)): n for b, n in self.buckets().items()}}

    def model_inputs(self, batch: dict, spec, c) -> tuple[dict, dict]:
        dist = spec.encode_video(c, batch["video"])
        cond = spec.encode_prompts(c, batch["caption"])
        return dist, cond


class CacheSource:
    """Latents and conditioning read from a latent cache (``t2v prepare``); no encoders loaded."""

    needs_encoders = False

    def __init__(self, cfg: TrainConfig) -> None:
        from t2v.cache import CachedLatentDataset, collate_cached

        self.cfg = cfg
        self.dataset = CachedLatentDataset(
            cfg.data.cache_dir, cfg.model.family, caption_dropout=cfg.data.caption_dropout, seed=cfg.data.seed
        )
        self.dataset.check_compatible(cfg.model.family, cfg.model.resolved_id())
        if cfg.data.caption_dropout > 0:
            self.dataset.empty_cond()  # fail now, not at the first dropped caption, if it was not cached
        self.collate = collate_cached

    def buckets(self) -> dict[tuple[int, int, int], int]:
        return self.dataset.bucket_counts()

    def frame_rate(self) -> float | None:
        return self.dataset.info["keyed_on"]["data"].get("fps")

    def describe(self) -> dict[str, Any]:
        keyed = self.dataset.info["keyed_on"]["data"]
        return {"source": "latent cache", "cache_dir": str(Path(self.cfg.data.cache_dir).expanduser().resolve()),
                "path": keyed.get("path"), "num_samples": len(self.dataset),
                "buckets": {"x".join(map(str, b)): n for b, n in self.buckets().items()}}

    def model_inputs(self, batch: dict, spec, c) -> tuple[dict, dict]:
        device = device_of(c)
        dist = {"mean": batch["mean"].to(device), "logvar": batch["logvar"].to(device)}
        cond = {k: v.to(device) for k, v in batch["cond"].items()}
        return dist, cond


def device_of(c) -> torch.device:
    return next(c.transformer.parameters()).device
