"""Grid mode through `captioner caption --mode grid` and through a corpus run."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from captioner.cli import cli
from captioner.configbase import load_config
from captioner.corpus import RunConfig, run_corpus
from captioner.record import load_record
from captioner.shards import iter_records

ROOT = Path(__file__).resolve().parent.parent


def test_caption_grid_mode_writes_a_one_call_record(samples_dir, tiny_models, tmp_path):
    out = tmp_path / "grid.json"
    result = CliRunner().invoke(
        cli, ["caption", str(samples_dir / "cockatoo.mp4"), "--config", "tiny", "--mode", "grid", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rec = load_record(out)
    assert rec.mode == "grid" and rec.prompt_version == "grid-v1"
    assert rec.first_caption is None and rec.diff_captions == []
    assert rec.summary
    assert rec.stats["model_calls"] == {"first": 0, "diff": 0, "summary": 1}
    times = [k.time for k in rec.keyframes]
    assert times[0] == 0.0 and times == sorted(times) and len(times) == 7  # every 2 s of 14 s
    assert all(abs(t - 2.0 * i) < 0.051 for i, t in enumerate(times))  # real frame times, near the grid


def test_corpus_run_in_grid_mode(media, tiny_models, tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.mp4").write_bytes(Path(media["multiscene"]).read_bytes())
    (corpus / "b.mp4").write_bytes(Path(media["static"]).read_bytes())
    cfg = load_config(RunConfig, ROOT / "configs" / "run" / "tiny.yaml", ["mode=grid", "run.workers=0"])
    summary = run_corpus(corpus, cfg, tmp_path / "run", progress=False)
    assert summary["captioned"] == 2 and summary["model_calls"] == 2
    assert all(r.mode == "grid" and r.summary for r in iter_records(tmp_path / "run"))
