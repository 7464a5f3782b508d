"""Image encoders that turn decoded frames into unit-length embeddings for keyframe selection.

Two kinds:

* :class:`PixelEncoder` needs no weights. It describes a frame by a blurred, contrast-normalised
  luma thumbnail, a coarse chroma thumbnail, a colour histogram and a gradient-orientation
  histogram. Each part is mean-centred (so unrelated frames land near zero rather than sharing a
  large common component) and scaled to a fixed weight, then the whole vector is L2-normalised.
  Cosine similarity is close to 1 for the same shot under small motion or noise and clearly lower
  across a cut.
* :class:`ClipEncoder` wraps any Hugging Face CLIP/SigLIP-style vision tower loaded with
  ``from_pretrained`` (hub id or local path). ShareGPT4Video used ``openai/clip-vit-large-patch14-336``
  and compared the CLS features. ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from densecap.config import StrictModel
from densecap.devices import resolve_device, resolve_dtype
from densecap.errors import ConfigError

__all__ = [
    "ImageEncoder",
    "PixelEncoder",
    "ClipEncoder",
    "EncoderConfig",
    "build_encoder",
]


class ImageEncoder(ABC):
    """Maps a batch of RGB frames to L2-normalised embeddings."""

    name: str = "encoder"
    #: Similarity threshold used by keyframe selection when the config leaves it unset.
    default_threshold: float = 0.93

    @abstractmethod
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 frames -> ``(N, D)`` float32 CPU tensor, each row of unit length."""

    @abstractmethod
    def describe(self) -> dict:
        """A JSON-serialisable description (type, model, feature, ...) recorded with results."""


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (N, H, W, 3), got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    return frames


@contextmanager
def _torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (no-op for None or when already equal)."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@contextmanager
def _transformers_quiet(enabled: bool = True):
    """Temporarily lower transformers' log level to errors (restored afterwards)."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as tf_logging

    prev = tf_logging.get_verbosity()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(prev)


# --------------------------------------------------------------------------------------------------
# Pixel encoder
# --------------------------------------------------------------------------------------------------


class PixelEncoder(ImageEncoder):
    """Weight-free frame descriptor: structure + colour, computed with batched torch ops.

    Parts (weights are the share of the squared norm of the final vector):

    * luma thumbnail ``thumb x thumb`` (default 16), zero-mean and divided by its std (plus a floor,
      so flat frames do not amplify noise) - the layout of the picture (weight 0.50);
    * chroma thumbnail ``thumb/2`` square of (B-Y, R-Y) - where the colours are (0.15); its norm is
      floored, so a grey picture keeps a near-zero chroma part instead of a noisy unit vector;
    * colour histogram, 4x4x4 RGB bins, square-rooted (Hellinger) and mean-centred (0.15);
    * gradient-orientation histogram, 8 unsigned orientations in 2x2 cells, magnitude-weighted,
      square-rooted and mean-centred per cell (0.20).
    """

    name = "pixel"
    default_threshold = 0.70  # calibrated on the test videos and samples, see docs/keyframes.md

    WEIGHTS = {"luma": 0.35, "chroma": 0.15, "color_hist": 0.25, "grad_hist": 0.25}
    COLOR_BINS = 4
    ORIENT_BINS = 8
    CELLS = 2

    def __init__(self, image_size: int = 64, thumb_size: int = 8, batch_size: int = 64, num_threads: int | None = 1):
        if image_size < 8 or thumb_size < 2 or thumb_size > image_size:
            raise ValueError("PixelEncoder needs image_size >= 8 and 2 <= thumb_size <= image_size")
        self.image_size = int(image_size)
        self.thumb_size = int(thumb_size)
        self.batch_size = int(batch_size)
        # The work per frame is tiny: torch's intra-op threads only add synchronisation, and on a
        # busy shared CPU they made encoding 10-70x slower in our measurements. None = torch's setting.
        self.num_threads = num_threads
        self._sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0

    def describe(self) -> dict:
        return {
            "type": "pixel",
            "image_size": self.image_size,
            "thumb_size": self.thumb_size,
            "weights": dict(self.WEIGHTS),
            "num_threads": self.num_threads,
        }

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        frames = _check_frames(frames)
        if len(frames) == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        with _torch_threads(self.num_threads):
            out = [self._encode_batch(frames[i : i + self.batch_size]) for i in range(0, len(frames), self.batch_size)]
        return torch.cat(out, 0)

    @property
    def dim(self) -> int:
        t = self.thumb_size
        c = max(1, t // 2)
        return t * t + 2 * c * c + self.COLOR_BINS**3 + self.CELLS * self.CELLS * self.ORIENT_BINS

    def _encode_batch(self, frames: np.ndarray) -> torch.Tensor:
        if not frames.flags.writeable or not frames.flags.c_contiguous:
            frames = np.array(frames, copy=True, order="C")  # torch warns on read-only arrays
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
        s = self.image_size
        # Area resize to a fixed square: averages away noise and makes the descriptor size-independent.
        x = F.interpolate(x, size=(s, s), mode="area") if x.shape[-2:] != (s, s) else x
        n = x.shape[0]
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        y = 0.299 * r + 0.587 * g + 0.114 * b  # (n, s, s)

        parts = {
            "luma": self._luma(y),
            "chroma": self._chroma(b - y, r - y),
            "color_hist": self._color_hist(x),
            "grad_hist": self._grad_hist(y),
        }
        feats = [parts[k] * (self.WEIGHTS[k] ** 0.5) for k in self.WEIGHTS]
        v = torch.cat([f.reshape(n, -1) for f in feats], 1)
        return F.normalize(v, dim=1).float()

    def _luma(self, y: torch.Tensor) -> torch.Tensor:
        t = self.thumb_size
        th = F.interpolate(y[:, None], size=(t, t), mode="area").flatten(1)
        th = th - th.mean(1, keepdim=True)
        th = th / (th.std(1, keepdim=True) + 0.03)
        return F.normalize(th, dim=1)

    def _chroma(self, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
        c = max(1, self.thumb_size // 2)
        th = F.interpolate(torch.stack([cb, cr], 1), size=(c, c), mode="area").flatten(1)
        # Typical saturated colours give |B-Y| ~ 0.3-0.5; flooring the norm keeps grey pictures near 0.
        floor = 0.15 * (th.shape[1] ** 0.5)
        return th / th.norm(dim=1, keepdim=True).clamp_min(floor)

    def _color_hist(self, x: torch.Tensor) -> torch.Tensor:
        # Soft (trilinear) binning: a colour near a bin edge splits between the two bins, so noise or a
        # small brightness change does not flip whole regions from one bin to the next.
        k = self.COLOR_BINS
        n = x.shape[0]
        pos = (x.flatten(2) * k - 0.5).clamp_(0, k - 1)  # (n, 3, P)
        lo = pos.floor().long().clamp_(0, k - 1)
        hi = (lo + 1).clamp_(max=k - 1)
        frac = pos - lo.float()
        hist = torch.zeros((n, k**3), dtype=torch.float32)
        for cr in (0, 1):
            ir, wr = (hi[:, 0], frac[:, 0]) if cr else (lo[:, 0], 1 - frac[:, 0])
            for cg in (0, 1):
                ig, wg = (hi[:, 1], frac[:, 1]) if cg else (lo[:, 1], 1 - frac[:, 1])
                for cb in (0, 1):
                    ib, wb = (hi[:, 2], frac[:, 2]) if cb else (lo[:, 2], 1 - frac[:, 2])
                    hist.scatter_add_(1, (ir * k + ig) * k + ib, wr * wg * wb)
        h = (hist / hist.sum(1, keepdim=True)).sqrt()
        h = h - h.mean(1, keepdim=True)
        return F.normalize(h, dim=1)

    def _grad_hist(self, y: torch.Tensor) -> torch.Tensor:
        n, s, _ = y.shape
        kx = self._sobel.to(y.dtype)
        w = torch.stack([kx, kx.t()])[:, None]  # (2, 1, 3, 3)
        g = F.conv2d(F.pad(y[:, None], (1, 1, 1, 1), mode="replicate"), w)  # (n, 2, s, s)
        gx, gy = g[:, 0], g[:, 1]
        mag = torch.sqrt(gx * gx + gy * gy)
        ang = torch.atan2(gy, gx) % torch.pi  # unsigned orientation in [0, pi)
        nb = self.ORIENT_BINS
        pos = ang / torch.pi * nb - 0.5  # soft binning between the two nearest (circular) bins
        lo = pos.floor()
        frac = pos - lo
        lo = lo.long() % nb
        hi = (lo + 1) % nb
        cells = self.CELLS
        cell_idx = torch.arange(s) * cells // s
        cell = (cell_idx[:, None] * cells + cell_idx[None, :])[None] * nb  # (1, s, s)
        hist = torch.zeros((n, cells * cells * nb), dtype=torch.float32)
        hist.scatter_add_(1, (cell + lo).flatten(1), (mag * (1 - frac)).flatten(1))
        hist.scatter_add_(1, (cell + hi).flatten(1), (mag * frac).flatten(1))
        hist = hist.view(n, cells * cells, nb)
        hist = hist / (hist.sum(2, keepdim=True) + 1e-3)  # flat cells -> near-zero vector
        h = hist.sqrt()
        h = h - h.mean(2, keepdim=True)
        return F.normalize(h.flatten(1), dim=1)


# --------------------------------------------------------------------------------------------------
# CLIP / SigLIP encoder
# --------------------------------------------------------------------------------------------------


class ClipEncoder(ImageEncoder):
    """A CLIP/SigLIP-style vision tower from ``from_pretrained`` (hub id, local directory, or
    ``tiny://clip`` for the offline tiny random CLIP).

    ``feature="cls"`` uses the pooled CLS token after the final layer norm (what ShareGPT4Video
    compared); ``feature="projected"`` uses the image embedding after the projection head. For
    SigLIP (no CLS token, no projection) both mean the attention-pooled output. Other architectures
    fall back to ``AutoModel`` + ``get_image_features``.
    """

    name = "clip"
    default_threshold = 0.93  # the authors' value for CLIP ViT-L/14-336 CLS features

    def __init__(
        self,
        model: str,
        feature: Literal["cls", "projected"] = "cls",
        batch_size: int = 32,
        device: str = "auto",
        dtype: str = "auto",
    ):
        from transformers import AutoConfig, AutoImageProcessor

        from captioner.modelrefs import resolve_model_ref

        if feature not in ("cls", "projected"):
            raise ConfigError(f"encoder.feature: got {feature!r}; allowed: 'cls', 'projected'")
        self.model_ref = str(model)  # as the config names it (hub id, path or tiny://clip)
        self.model_id = resolve_model_ref(self.model_ref)
        self.feature = feature
        self.batch_size = int(batch_size)
        self.device = torch.device(resolve_device(device))
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            config = AutoConfig.from_pretrained(self.model_id, trust_remote_code=False)
            self.processor = AutoImageProcessor.from_pretrained(self.model_id, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"encoder.model {self.model_id!r}: cannot load ({exc})") from None
        self.model_type = getattr(config, "model_type", "")
        self.kind, self.model = self._load_model(config)
        self.model.to(device=self.device, dtype=self.dtype).eval()

    def _load_model(self, config):
        import transformers as tf

        mt = self.model_type
        if mt in ("clip", "clip_vision_model"):
            cls = tf.CLIPVisionModelWithProjection
            kind = "clip"
        elif mt in ("siglip", "siglip_vision_model"):
            cls = tf.SiglipVisionModel
            kind = "siglip"
        else:
            cls = tf.AutoModel
            kind = "auto"
        kw = {"trust_remote_code": False} if cls is tf.AutoModel else {}
        quiet = False
        if mt == "clip":
            # A full CLIPModel checkpoint (e.g. openai/clip-vit-large-patch14-336): load its vision
            # half. projection_dim lives on the top-level config; the text weights are expected to
            # be unused, so the load report about them is silenced.
            vcfg = config.vision_config
            vcfg.projection_dim = config.projection_dim
            kw["config"] = vcfg
            quiet = True
        try:
            with _transformers_quiet(quiet):
                model = cls.from_pretrained(self.model_id, **kw)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"encoder.model {self.model_id!r}: cannot load weights ({exc})") from None
        if kind == "auto" and not hasattr(model, "get_image_features"):
            raise ConfigError(
                f"encoder.model {self.model_id!r}: model type {mt!r} has no image features "
                "(use a CLIP or SigLIP checkpoint)"
            )
        return kind, model

    def describe(self) -> dict:
        return {
            "type": "clip",
            "model": self.model_ref,
            "model_type": self.model_type,
            "feature": self.feature if self.kind == "clip" else ("pooled" if self.kind == "siglip" else "image_features"),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        frames = _check_frames(frames)
        outs = []
        for i in range(0, len(frames), self.batch_size):
            batch = [f for f in frames[i : i + self.batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt")
            pv = inputs["pixel_values"].to(device=self.device, dtype=self.dtype)
            outs.append(self._forward(pv).float().cpu())
        if not outs:
            return torch.zeros((0, 0), dtype=torch.float32)
        return F.normalize(torch.cat(outs, 0), dim=1)

    def _forward(self, pv: torch.Tensor) -> torch.Tensor:
        if self.kind == "clip":
            if self.feature == "cls":
                return self.model.vision_model(pixel_values=pv).pooler_output
            return self.model(pixel_values=pv).image_embeds
        if self.kind == "siglip":
            return self.model(pixel_values=pv).pooler_output
        feats = self.model.get_image_features(pixel_values=pv)
        if not isinstance(feats, torch.Tensor):  # some versions return a model output
            pooled = getattr(feats, "pooler_output", None)
            feats = pooled if pooled is not None else feats[0]
        return feats


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


class EncoderConfig(StrictModel):
    """Which encoder embeds the candidate frames (``keyframes.encoder`` in YAML)."""

    type: Literal["pixel", "clip"] = "pixel"
    model: str | None = Field(default=None, description="HF model id or local path (clip only)")
    feature: Literal["cls", "projected"] = "cls"
    batch_size: int = Field(default=32, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    image_size: int = Field(default=64, ge=8, le=512, description="pixel: side of the square the frame is area-resized to")
    thumb_size: int = Field(default=8, ge=2, le=128, description="pixel: side of the luma layout thumbnail")

    @model_validator(mode="after")
    def _check(self) -> "EncoderConfig":
        if self.type == "clip" and not self.model:
            raise ValueError("encoder.model is required when encoder.type is 'clip' (e.g. openai/clip-vit-large-patch14-336)")
        if self.type == "pixel" and self.thumb_size > self.image_size:
            raise ValueError("encoder.thumb_size must not exceed encoder.image_size")
        return self


def build_encoder(cfg: EncoderConfig) -> ImageEncoder:
    if cfg.type == "pixel":
        return PixelEncoder(image_size=cfg.image_size, thumb_size=cfg.thumb_size, batch_size=max(cfg.batch_size, 64))
    if cfg.type == "clip":
        return ClipEncoder(cfg.model, feature=cfg.feature, batch_size=cfg.batch_size, device=cfg.device, dtype=cfg.dtype)
    raise ConfigError(f"encoder.type: got {cfg.type!r}; allowed: 'pixel', 'clip'")
