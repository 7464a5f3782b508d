"""The `captioner` command as a user runs it: outputs, exit codes, error messages."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from packaging.version import Version

from captioner.cli import cli
from captioner.clitools import CLIGroup
from captioner.errors import CaptionerError
from captioner.record import load_record

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console script's code in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "captioner.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ},
    )


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def behaviour(record) -> dict:
    """A record without timings and without the library versions it names (checked well-formed); its
    video path relative to the repository (records store absolute paths, the shipped sample a relative one)."""
    data = record.without_timings()
    data["video"]["path"] = os.path.relpath(os.path.join(ROOT, data["video"]["path"]), ROOT)
    for role in ("captioner", "summarizer"):
        version = data["models"][role].pop("transformers_version")
        assert isinstance(version, str) and Version(version), (role, version)
    return data


def assert_same_behaviour(got, want, where="record"):
    """Equal, floats within 1e-5: the encoder's similarities differ in the last bits between CPUs (the
    matrix kernels sum in another order), and a shipped record must match on any machine."""
    if isinstance(want, float) and isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6), (where, got, want)
    elif isinstance(want, dict) and isinstance(got, dict):
        assert got.keys() == want.keys(), (where, sorted(got.keys() ^ want.keys()))
        for key in want:
            assert_same_behaviour(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), (where, len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_behaviour(g, w, f"{where}[{i}]")
    else:
        assert got == want, (where, got, want)


def test_info_prints_metadata(samples_dir):
    result = CliRunner().invoke(cli, ["info", str(samples_dir / "cockatoo.mp4")])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["fps"] == pytest.approx(20.0) and meta["num_frames"] == 280
    assert (meta["width"], meta["height"]) == (1280, 720)


def test_bad_video_exits_nonzero_with_message_and_no_traceback(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    proc = run_cli("keyframes", str(bad), "--out", str(tmp_path / "kf"))
    assert proc.returncode == 1
    assert "broken.mp4" in proc.stderr and "error:" in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = run_cli("--debug", "keyframes", str(bad), "--out", str(tmp_path / "kf"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_subcommand(tmp_path, where):
    args = ["keyframes", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "kf")]
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 1 and plain.stderr.startswith("error: ") and plain.stderr.count("\n") == 1
    assert "nope.mp4" in plain.stderr and "Traceback" not in plain.output
    debug = CliRunner().invoke(cli, ["--debug", *args] if where == "before" else [*args, "--debug"])
    assert isinstance(debug.exception, CaptionerError)  # raised on: Python prints the traceback


def test_one_output_convention_in_both_clis():
    """--debug and --verbose/-v: the same shared options on both groups and on every subcommand."""
    from t2v.cli import cli as t2v_cli

    for group in (cli, t2v_cli):
        assert isinstance(group, CLIGroup)
        for command in [group, *group.commands.values()]:
            opts = {o for p in command.params for o in p.opts}
            assert {"--debug", "--verbose", "-v"} <= opts, command.name


@pytest.mark.parametrize("args, shown", [
    ([], {"WARNING"}), (["-v"], {"INFO", "WARNING"}), (["--verbose"], {"INFO", "WARNING"}),
    (["--debug"], {"DEBUG", "INFO", "WARNING"}),
])
@pytest.mark.parametrize("where", ["before", "after"])
def test_log_levels(args, shown, where):
    """Warnings only by default; --verbose adds INFO logs, --debug DEBUG logs (on stderr)."""
    group = click.group(cls=CLIGroup)(lambda: None)

    @group.command()
    def hello() -> None:
        log = logging.getLogger("captioner.hello")
        log.debug("DEBUG line")
        log.info("INFO line")
        log.warning("WARNING line")
        click.echo("result")

    try:
        result = CliRunner().invoke(group, [*args, "hello"] if where == "before" else ["hello", *args])
        assert result.exit_code == 0 and result.stdout == "result\n"
        assert {line.split()[0] for line in result.stderr.splitlines()} == shown
    finally:
        CliRunner().invoke(group, ["hello"])  # back to the defaults for the tests that follow


def test_missing_video_and_bad_config_are_clear(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["keyframes", str(tmp_path / "nope.mp4"), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "nope.mp4" in result.output and "not found" in result.output
    result = runner.invoke(cli, ["caption", "x.mp4", "--out", "r.json", "--set", "diffsw.pair_mode=sidebyside"])
    assert result.exit_code == 1 and "diffsw.pair_mode" in result.output and "stacked" in result.output
    result = runner.invoke(cli, ["caption", "x.mp4", "--out", "r.json", "--config", "nosuchpreset"])
    assert result.exit_code == 1 and "presets:" in result.output and "tiny" in result.output


def test_keyframes_command_writes_json_and_images(samples_dir, tmp_path):
    out = tmp_path / "kf"
    result = CliRunner().invoke(
        cli, ["keyframes", str(samples_dir / "cockatoo.mp4"), "--out", str(out), "--save-images", "--set", "max_keyframes=4"]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # quiet by default: only the command's own lines, on stdout
    data = json.loads((out / "keyframes.json").read_text())
    kfs = data["keyframes"]
    assert 1 <= len(kfs) <= 4
    assert kfs[0]["similarity"] is None and all(k["similarity"] is not None for k in kfs[1:])
    assert [k["time"] for k in kfs] == sorted(k["time"] for k in kfs)
    images = sorted(out.glob("*.jpg"))
    assert len(images) == len(kfs)


def test_caption_command_end_to_end_with_tiny_models(samples_dir, tiny_models, tmp_path):
    """The README's offline quick start: caption a sample video through the CLI with the tiny preset."""
    out = tmp_path / "cockatoo.json"
    proc = run_cli("caption", "samples/cockatoo.mp4", "--config", "tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no library logs, warnings or weight-loading bars without --verbose
    assert proc.stdout.splitlines()[-1] == f"wrote {out}"
    record = load_record(out)
    assert record.video.num_frames == 280 and record.video.fps == pytest.approx(20.0)
    assert len(record.keyframes) >= 2
    assert len(record.diff_captions) == len(record.keyframes) - 1
    for kf, diff in zip(record.keyframes, record.diff_captions):
        assert diff.t_start == kf.time
    assert record.diff_captions[-1].t_end == record.keyframes[-1].time
    assert record.first_caption.text and record.summary and all(d.text for d in record.diff_captions)
    assert record.prompt_version == "diffsw-v1"
    assert record.models["captioner"]["backend"] == "hf"
    assert record.models["summarizer"]["model"] != record.models["captioner"]["model"]
    assert record.stats["model_calls"] == {"first": 1, "diff": len(record.diff_captions), "summary": 1}
    assert set(record.timings) >= {"keyframes_s", "first_caption_s", "diff_captions_s", "summary_s", "total_s"}
    assert record.config["keyframes"]["threshold"] is not None  # the threshold really applied

    # samples/cockatoo.diffsw.json is what this command wrote when it was shipped (same tiny models);
    # the library versions it names follow the install, so they only have to be there.
    shipped = load_record(samples_dir / "cockatoo.diffsw.json")
    assert record.models["captioner"]["transformers_version"] == transformers_version()
    assert_same_behaviour(behaviour(record), behaviour(shipped))

    # Greedy decoding: the same command gives the same record (only timings differ).
    again = tmp_path / "again.json"
    proc = run_cli("caption", "samples/cockatoo.mp4", "--config", "tiny", "--out", str(again))
    assert proc.returncode == 0, proc.stderr
    assert load_record(again).without_timings() == record.without_timings()
