"""Semantic-based data filtering: the first stage of ShareGPT4Video's pipeline.

Clips whose short captions say nearly the same thing are near-duplicates for training purposes;
keeping one of each group gives a corpus with more diverse content for the same captioning cost.
Each caption is embedded with a sentence model (:mod:`captioner.textembed`) and the clips are
walked in manifest order with a greedy rule:

    keep a clip only when its cosine similarity to EVERY clip kept so far is below ``threshold``;
    otherwise drop it as a duplicate of the kept clip it is most similar to.

Filtering reads captions only: it never opens the videos, so the paths need not exist (or be
reachable) on the machine that filters.

Choosing the threshold (for the default all-MiniLM-L6-v2 embeddings; other models differ):
identical captions score 1.0; near-verbatim rewordings ("A dog runs on the beach" / "A dog is
running along the beach") about 0.90-0.95; looser paraphrases ("A cat sleeps on a sofa" / "A cat
is sleeping on the couch") about 0.85-0.90; the same topic with different content 0.5-0.8; unrelated
captions below 0.3. The default 0.9 drops only close rewordings. Lower it (0.8-0.85) to also merge
looser paraphrases, at the cost of dropping some clips that differ in details the caption does
mention. ``filter_summary.json`` reports quantiles of each clip's nearest-earlier-kept similarity
to help pick a value: run once, look at the ``dropped.jsonl`` pairs around the candidate value.

The greedy walk is computed with blocked matrix products (:func:`greedy_dedup`) and gives exactly
the decisions of the one-clip-at-a-time loop, given the same similarity values.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field

from captioner.manifest import CAPTION_KEYS, Clip
from captioner.textembed import TextEmbedder, TextEmbedderConfig
from densecap.config import StrictModel
from densecap.errors import CaptionerError

__all__ = ["FilterConfig", "FilterError", "Dropped", "FilterResult", "greedy_dedup", "filter_clips"]

log = logging.getLogger(__name__)


class FilterError(CaptionerError):
    """Clips cannot be filtered (no captions, a clip without a caption under ``missing_caption: error``)."""


class FilterConfig(StrictModel):
    """Semantic filtering settings (``configs/filter/*.yaml``)."""

    threshold: float = Field(
        default=0.9,
        allow_inf_nan=False,
        description="keep a clip only when its cosine similarity to every kept clip is below this "
        "(1.0 or more keeps every distinct caption; see captioner/filter.py for how to choose it)",
    )
    embedder: TextEmbedderConfig = Field(default_factory=TextEmbedderConfig)
    block_size: int = Field(default=4096, ge=1, description="clips compared per matrix product")
    missing_caption: Literal["keep", "drop", "error"] = Field(
        default="keep", description="clips without a caption: keep them (unfiltered), drop them, or stop"
    )


# --------------------------------------------------------------------------------------------------
# Greedy deduplication
# --------------------------------------------------------------------------------------------------

_NEG_INF = float("-inf")
_MAX_TILE = 1 << 22  # elements of one block x kept similarity tile (16 MiB in float32: cache-friendly)


def greedy_dedup(
    embeddings: torch.Tensor, threshold: float, block_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy near-duplicate removal over rows of ``embeddings`` (``(N, D)``, unit rows for cosine).

    The rule, walking rows in order: row ``i`` is dropped when ``max_j sim(i, j) >= threshold`` over
    the rows ``j < i`` that were KEPT; otherwise it is kept. ``sim`` is the dot product.

    Returns ``(keep_mask, dup_of, sim)``: ``keep_mask`` bool ``(N,)``; ``dup_of`` int64 ``(N,)``, for a
    dropped row the index of the kept row it is most similar to (the lowest index on a tie), -1 for
    kept rows; ``sim`` float32 ``(N,)``, the row's highest similarity to a kept row before it (NaN for
    a row with none, i.e. the first row).

    How: rows are taken ``block_size`` at a time. One matrix product compares the block with every
    row kept before it (tiled over the kept rows to bound memory); the only sequential dependency
    left is inside the block, resolved from the block's own ``block x block`` similarity matrix with
    a loop over just the rows that clash with an earlier row of the same block. Kept rows go to a
    preallocated buffer that doubles when full.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"expected embeddings of shape (N, D), got {tuple(embeddings.shape)}")
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    x = embeddings if embeddings.dtype in (torch.float32, torch.float64) else embeddings.float()
    if threshold == _NEG_INF:  # every finite similarity clashes; -inf marks "no such pair" below
        threshold = float(torch.finfo(x.dtype).min)
    n = x.shape[0]
    device = x.device
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    dup_of = torch.full((n,), -1, dtype=torch.long, device=device)
    best = torch.full((n,), float("nan"), dtype=x.dtype, device=device)
    if n == 0:
        return keep.cpu(), dup_of.cpu(), best.float().cpu()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("embeddings contain NaN or infinite values")

    kept = _KeptRows(x, block_size)
    blocks = _BlockWork(x, block_size)
    for b0 in range(0, n, block_size):
        b1 = min(n, b0 + block_size)
        xb = x[b0:b1]
        prev_max, prev_arg = kept.nearest(xb, blocks.tile_buf)  # 1. against every row kept before this block
        block_keep, row_best, row_arg = blocks.resolve(xb, b0, prev_max, prev_arg, threshold)  # 2. and 3.
        keep[b0:b1] = block_keep
        dup_of[b0:b1] = torch.where(block_keep, torch.full_like(row_arg, -1), row_arg)
        best[b0:b1] = torch.where(torch.isinf(row_best), torch.full_like(row_best, float("nan")), row_best)
        kept.append(xb, block_keep, b0)  # 4. the block's kept rows

    return keep.cpu(), dup_of.cpu(), best.float().cpu()


class _KeptRows:
    """The rows kept so far (embeddings and indices) in a preallocated buffer that doubles when full."""

    def __init__(self, x: torch.Tensor, block_size: int):
        n, d = x.shape
        self.limit = n
        self.capacity = min(n, max(1024, 2 * block_size))
        self.emb = torch.empty((self.capacity, d), dtype=x.dtype, device=x.device)
        self.idx = torch.empty(self.capacity, dtype=torch.long, device=x.device)
        self.count = 0

    def nearest(self, xb: torch.Tensor, tile_buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's highest similarity to a kept row (-inf when none) and that row's index (-1 when
        none; the lowest index on a tie), with products tiled over the kept rows."""
        m = xb.shape[0]
        prev_max = torch.full((m,), _NEG_INF, dtype=xb.dtype, device=xb.device)
        prev_arg = torch.full((m,), -1, dtype=torch.long, device=xb.device)
        if not self.count:
            return prev_max, prev_arg
        tile = max(1, _MAX_TILE // m)
        for k0 in range(0, self.count, tile):
            k1 = min(self.count, k0 + tile)
            sims = tile_buf[: m * (k1 - k0)].view(m, k1 - k0)
            torch.mm(xb, self.emb[k0:k1].t(), out=sims)
            tmax, targ = sims.max(1)
            better = tmax > prev_max  # strict: an earlier kept row wins a tie
            prev_max = torch.where(better, tmax, prev_max)
            prev_arg = torch.where(better, targ + k0, prev_arg)
        prev_arg = torch.where(prev_arg >= 0, self.idx[prev_arg.clamp_min(0)], prev_arg)
        return prev_max, prev_arg

    def append(self, xb: torch.Tensor, block_keep: torch.Tensor, b0: int) -> None:
        """Add the rows of the block starting at row ``b0`` that ``block_keep`` marks."""
        new = torch.nonzero(block_keep).flatten()
        k = int(new.numel())
        if not k:
            return
        if self.count + k > self.capacity:
            self.capacity = min(self.limit, max(2 * self.capacity, self.count + k))
            self.emb = _grow(self.emb, self.capacity)
            self.idx = _grow(self.idx, self.capacity)
        self.emb[self.count : self.count + k] = xb[new]
        self.idx[self.count : self.count + k] = new + b0
        self.count += k


class _BlockWork:
    """Buffers reused from block to block (a fresh large tensor per product would pay page faults every
    time), and the decisions inside one block."""

    def __init__(self, x: torch.Tensor, block_size: int):
        bs = min(block_size, x.shape[0])
        self.upper = torch.ones((bs, bs), dtype=torch.bool, device=x.device).triu()  # diagonal and above
        self.gram_buf = torch.empty(bs * bs, dtype=x.dtype, device=x.device)
        self.tile_buf = torch.empty(max(_MAX_TILE, bs), dtype=x.dtype, device=x.device)

    def resolve(
        self, xb: torch.Tensor, b0: int, prev_max: torch.Tensor, prev_arg: torch.Tensor, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(block_keep, row_best, row_arg)`` of the block starting at row ``b0``: which rows are kept,
        and each row's highest similarity to a kept row before it and that row's index."""
        m = xb.shape[0]
        # 2. Inside the block: rows that survived step 1, in order. gram[r, j] is kept only for
        #    j < r (the rest set to -inf in place), so clash[r, j] means "j before r clashes with r".
        gram = self.gram_buf[: m * m].view(m, m)
        torch.mm(xb, xb.t(), out=gram)
        gram.masked_fill_(self.upper[:m, :m], _NEG_INF)
        clash = gram >= threshold
        cand = prev_max < threshold
        if not bool(cand.all()):
            clash[~cand] = False
            clash[:, ~cand] = False
        block_keep = _resolve_block(clash, cand)

        # 3. Each row's best earlier kept row inside the block (columns kept and before the row).
        if not bool(block_keep.all()):
            gram[:, ~block_keep] = _NEG_INF
        in_max, in_arg = gram.max(1)
        use_in = in_max > prev_max  # strict: rows kept before the block have lower indices
        row_best = torch.where(use_in, in_max, prev_max)
        row_arg = torch.where(use_in, in_arg + b0, prev_arg)
        return block_keep, row_best, row_arg


def _grow(t: torch.Tensor, capacity: int) -> torch.Tensor:
    out = torch.empty((capacity, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out[: t.shape[0]] = t
    return out


def _resolve_block(clash: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Sequential greedy rule inside one block: which candidate rows are kept.

    ``clash[r, j]`` (only for ``j < r``, both candidates): the rows are too similar. A candidate
    that clashes with no earlier candidate is kept for sure; only rows that take part in a clash
    need the ordered walk, which visits each once and, for a row it keeps, marks the later rows
    that clash with it as dropped (one vector operation per row).
    """
    if not bool(clash.any()):
        return cand.clone()
    clash_np = clash.cpu().numpy()
    keep_np = cand.cpu().numpy().copy()
    involved = (clash_np.any(0) | clash_np.any(1)).nonzero()[0]
    # later[a, b]: involved row involved[b] comes after involved[a] and clashes with it
    later = np.ascontiguousarray(clash_np[np.ix_(involved, involved)].T)
    dropped = np.zeros(len(involved), dtype=bool)
    for a, r in enumerate(involved.tolist()):
        if dropped[a]:
            keep_np[r] = False
        else:  # no earlier kept row clashes with r: r is kept, its later clashing rows are dropped
            dropped |= later[a]
    return torch.from_numpy(keep_np).to(clash.device)


# --------------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------------


class Dropped(NamedTuple):
    """A dropped clip; ``duplicate_of``/``similarity`` are None when it was dropped for having no caption."""

    clip: Clip
    duplicate_of: Clip | None
    similarity: float | None

    @property
    def reason(self) -> str:
        return "missing_caption" if self.duplicate_of is None else "duplicate"


@dataclass
class FilterResult:
    kept: list[Clip]
    dropped: list[Dropped]
    stats: dict[str, Any] = field(default_factory=dict)


def _has_caption(clip: Clip) -> bool:
    return clip.caption is not None and bool(clip.caption.strip())


def filter_clips(clips: list[Clip], cfg: FilterConfig | None = None, embedder: TextEmbedder | None = None) -> FilterResult:
    """Drop clips whose caption is a near-duplicate of an earlier kept clip's (order = input order).

    Clips without a caption are kept (unfiltered), dropped, or raise :class:`FilterError`, as
    ``cfg.missing_caption`` says. Videos are never opened.
    """
    cfg = cfg or FilterConfig()
    t0 = time.perf_counter()
    clips = list(clips)
    with_caption = [i for i, c in enumerate(clips) if _has_caption(c)]
    missing = len(clips) - len(with_caption)
    if clips and not with_caption:
        raise FilterError(
            f"none of the {len(clips)} clips has a caption (a manifest needs one of the columns "
            f"{', '.join(CAPTION_KEYS)})"
        )
    if missing and cfg.missing_caption == "error":
        first = next(c for c in clips if not _has_caption(c))
        raise FilterError(
            f"{first.source or first.path}: clip {first.clip_id} has no caption ({missing} of {len(clips)} "
            "clips lack one); set missing_caption to keep or drop to go on"
        )

    if embedder is None:
        embedder = TextEmbedder(cfg.embedder)
    t_embed = time.perf_counter()
    emb = embedder.encode([clips[i].caption for i in with_caption])  # type: ignore[misc]
    embed_s = time.perf_counter() - t_embed
    t_dedup = time.perf_counter()
    keep_mask, dup_of, sim = greedy_dedup(emb, cfg.threshold, cfg.block_size)
    dedup_s = time.perf_counter() - t_dedup

    keep_sel = keep_mask.tolist()
    dup_sel = dup_of.tolist()
    sim_sel = sim.tolist()
    status: dict[int, tuple[bool, int, float]] = {
        ci: (keep_sel[k], dup_sel[k], sim_sel[k]) for k, ci in enumerate(with_caption)
    }
    kept: list[Clip] = []
    dropped: list[Dropped] = []
    for i, clip in enumerate(clips):
        if i not in status:
            if cfg.missing_caption == "keep":
                kept.append(clip)
            else:
                dropped.append(Dropped(clip, None, None))
            continue
        is_kept, dup, s = status[i]
        if is_kept:
            kept.append(clip)
        else:
            dropped.append(Dropped(clip, clips[with_caption[dup]], float(s)))

    n_dup = sum(1 for d in dropped if d.duplicate_of is not None)
    stats: dict[str, Any] = {
        "total": len(clips),
        "with_caption": len(with_caption),
        "missing_caption": missing,
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_duplicates": n_dup,
        "dropped_missing_caption": len(dropped) - n_dup,
        "threshold": cfg.threshold,
        "missing_caption_policy": cfg.missing_caption,
        "embedder": embedder.describe() if hasattr(embedder, "describe") else {},
        "nearest_kept_similarity": _quantiles(sim),
        "timings": {
            "embed_s": round(embed_s, 4),
            "dedup_s": round(dedup_s, 4),
            "total_s": round(time.perf_counter() - t0, 4),
        },
    }
    log.info(
        "filter: %d clips, %d kept, %d duplicates, %d without caption (%s) in %.2fs",
        len(clips), len(kept), n_dup, missing, cfg.missing_caption, stats["timings"]["total_s"],
    )
    return FilterResult(kept=kept, dropped=dropped, stats=stats)


def _quantiles(sim: torch.Tensor) -> dict[str, float]:
    """Quantiles of each clip's highest similarity to an earlier kept clip (first clip excluded)."""
    s = sim.double().numpy()
    s = s[~np.isnan(s)]
    if s.size == 0:
        return {}
    qs = {"p10": 0.10, "p50": 0.50, "p90": 0.90, "p99": 0.99}
    out = {k: round(float(np.quantile(s, q)), 4) for k, q in qs.items()}
    out["max"] = round(float(s.max()), 4)
    return out


def _clip_ref(clip: Clip) -> dict:
    return {"path": clip.path, "start": clip.start, "end": clip.end, "caption": clip.caption}


def write_filter_outputs(
    result: FilterResult, out_dir: str | Path, cfg: FilterConfig, source: str | Path | None = None, started: float | None = None
) -> dict:
    """Write ``kept.jsonl`` (a manifest), ``dropped.jsonl`` (each dropped clip with the kept clip it
    duplicates and their similarity) and ``filter_summary.json``; returns the summary."""
    from captioner.manifest import write_manifest
    from densecap.files import write_json_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept_path = write_manifest(result.kept, out_dir / "kept.jsonl")
    lines = []
    for d in result.dropped:
        row = {
            **_clip_ref(d.clip),
            "source": d.clip.source,
            "reason": d.reason,
            "duplicate_of": None if d.duplicate_of is None else _clip_ref(d.duplicate_of),
            "similarity": None if d.similarity is None else round(d.similarity, 6),
        }
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    dropped_path = write_json_atomic(out_dir / "dropped.jsonl", "".join(lines))
    stats = result.stats
    summary = {
        "manifest": None if source is None else str(source),
        "total": stats["total"],
        "kept": stats["kept"],
        "dropped": stats["dropped"],
        "dropped_duplicates": stats["dropped_duplicates"],
        "dropped_missing_caption": stats["dropped_missing_caption"],
        "missing_caption": stats["missing_caption"],
        "threshold": cfg.threshold,
        "model": stats["embedder"].get("model", cfg.embedder.model),
        "embedder": stats["embedder"],
        "nearest_kept_similarity": stats["nearest_kept_similarity"],
        "config": cfg.model_dump(mode="json"),
        "timings": stats["timings"],
        "seconds": None if started is None else round(time.perf_counter() - started, 3),
        "outputs": {"kept": str(kept_path), "dropped": str(dropped_path)},
    }
    write_json_atomic(out_dir / "filter_summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary
