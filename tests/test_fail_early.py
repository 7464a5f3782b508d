"""Commands check what they read and write before the expensive work (issue 9, "Fail before the
expensive work"): a missing input or an output that cannot be written is one ``error:`` line naming
the path, exit status 1, no traceback, no model loaded and nothing left behind; finished work is
never lost to a late write error.

"No model loaded" is shown, not assumed: the commands run with model references that fail loudly
when anything resolves or loads them (``/nonexistent/...``), and a control run with good paths shows
that error. The bad-path runs must stop on the path instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.cli import cli as captioner_cli
from captioner.errors import CaptionerError
from captioner.paths import check_input, check_input_file, check_output_dir, check_output_file, write_or_keep
from captioner.record import load_record
from t2v.cli import cli as t2v_cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
CAPTION_MODELS = ["--config", "tiny", "--set", "captioner.model=/nonexistent/vlm",
                  "--set", "summarizer.model=/nonexistent/llm"]


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("A white cockatoo raises its crest.\n")
    return path


# name -> (cli, args(input, out), what --out is, a good input, the error a model load gives)
COMMANDS = {
    "caption": (captioner_cli, lambda i, o: ["caption", str(i), "--out", str(o), *CAPTION_MODELS],
                "file", lambda t: SAMPLES / "realshort.mp4", "/nonexistent/vlm"),
    "keyframes": (captioner_cli, lambda i, o: ["keyframes", str(i), "--out", str(o), "--config", "tiny",
                                               "--set", "encoder.model=/nonexistent/clip"],
                  "dir", lambda t: SAMPLES / "realshort.mp4", "/nonexistent/clip"),
    "run": (captioner_cli, lambda i, o: ["run", str(i), "--out", str(o), *CAPTION_MODELS, "--set", "run.workers=0",
                                         "--no-progress"],
            "dir", lambda t: SAMPLES / "train", "/nonexistent/vlm"),
    "generate": (t2v_cli, lambda i, o: ["generate", "--config", "tiny", "--set", "model.id=/nonexistent/wan",
                                        "--prompts", str(i), "--out", str(o)],
                 "dir", _prompts, "/nonexistent/wan"),
}


def _invoke(cli, args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_error(result, path: Path, problem: str) -> str:
    """Exit 1 through the CLI's error handling (not an escaped exception), and stderr is exactly one
    ``error:`` line that names ``path`` and the problem."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), result.stderr
    assert problem in lines[0], lines[0]
    return lines[0]


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder in which no file can be created: a mode-555 folder, or, for root (which ignores mode
    bits), /sys/kernel (sysfs refuses new files even to root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/kernel")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no folder here refuses new files (running as root, and /sys/kernel is writable)")


def _unwritable(tmp_path: Path, kind: str, want: str) -> tuple[Path, str]:
    """An output path of ``kind`` that cannot be written, and the words its error must have."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file\n")
    if kind == "under a file":
        return blocker / "out", f"{blocker} is a file, not a folder"
    if kind == "wrong type":
        if want == "dir":
            return blocker, "is a file; the output is a folder"
        folder = tmp_path / "a-folder"
        folder.mkdir()
        return folder, "is a folder; the output is a file"
    return _read_only_dir(tmp_path) / "out", "cannot write in"


# --------------------------------------------------------------------------------------------------
# the shared checks


def test_checks_accept_good_paths_and_create_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output_file("r.json") == Path("r.json")
    assert check_output_dir(tmp_path / "a" / "b" / "c") == tmp_path / "a" / "b" / "c"
    assert check_output_dir(tmp_path) == tmp_path
    (tmp_path / "in.txt").write_text("x")
    assert check_input_file(tmp_path / "in.txt") == tmp_path / "in.txt"
    assert check_input(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # no probe files, no folders


def test_checks_name_the_path_and_the_problem(tmp_path):
    def fails(check, path: Path, problem: str, *args) -> None:
        with pytest.raises(CaptionerError) as err:
            check(path, *args)
        assert str(err.value).startswith(f"{path}: ") and problem in str(err.value), str(err.value)

    fails(check_input_file, tmp_path / "nope.mp4", "video not found", "video")
    fails(check_input_file, tmp_path, "is a folder, not a video", "video")
    cases = [(kind, want) for kind in ("under a file", "wrong type") for want in ("file", "dir")]
    for n, (kind, want) in enumerate(cases):
        (tmp_path / str(n)).mkdir()
        fails(check_output_file if want == "file" else check_output_dir, *_unwritable(tmp_path / str(n), kind, want))
    path, _ = _unwritable(tmp_path, "read only", "file")
    fails(check_output_file, path, f"cannot write in {path.parent} (")


def test_write_or_keep_keeps_the_text_and_says_where(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert write_or_keep(tmp_path / "ok" / "r.json", "{}\n") == tmp_path / "ok" / "r.json"
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(CaptionerError, match=rf"^{re.escape(str(blocker / 'r.json'))}: cannot write the record "
                                             rf"\(.*\); it was saved to {re.escape(str(cwd))}/r\..*\.json instead$") as err:
        write_or_keep(blocker / "r.json", '{"a": 1}\n', "record")
    kept = Path(str(err.value).split("saved to ")[1].removesuffix(" instead"))
    assert kept.parent == cwd and kept.read_text() == '{"a": 1}\n'


# --------------------------------------------------------------------------------------------------
# the commands


@pytest.mark.parametrize("name", list(COMMANDS))
def test_control_with_good_paths_the_model_reference_fails_loudly(name, tmp_path):
    """The control: with a good input and output the same command reaches its models and fails on them,
    so the tests below, which fail on a path instead, stop before any model. A run that fails before
    any clip is done leaves no run.json or errors.jsonl behind either."""
    cli, args, _, good, model = COMMANDS[name]
    out = tmp_path / ("out.json" if COMMANDS[name][2] == "file" else "out")
    result = _invoke(cli, args(good(tmp_path), out))
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.output, result.exception)
    assert model in result.stderr and "Traceback" not in result.output
    if name == "run":
        assert not out.exists()  # the folder it made for the run is gone again


@pytest.mark.parametrize("name", list(COMMANDS))
def test_missing_input_fails_before_any_model(name, tmp_path):
    cli, args, want, _, model = COMMANDS[name]
    missing = tmp_path / "missing.input"
    out = tmp_path / ("out.json" if want == "file" else "out")
    line = assert_clean_error(_invoke(cli, args(missing, out)), missing, "not found")
    assert model not in line
    assert not out.exists()


def test_a_folder_given_as_the_video(tmp_path):
    cli, args, *_ = COMMANDS["caption"]
    assert_clean_error(_invoke(cli, args(tmp_path, tmp_path / "r.json")), tmp_path, "is a folder, not a video")


@pytest.mark.parametrize("kind", ["under a file", "wrong type", "read only"])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_unwritable_output_fails_before_any_model(name, kind, tmp_path):
    cli, args, want, good, model = COMMANDS[name]
    out, problem = _unwritable(tmp_path, kind, want)
    line = assert_clean_error(_invoke(cli, args(good(tmp_path), out)), out, problem)
    assert model not in line


def test_run_on_a_missing_input_leaves_no_run_files(tmp_path):
    """Also when the run folder exists already (created by hand, or by an earlier command)."""
    cli, args, *_ = COMMANDS["run"]
    out = tmp_path / "run"
    out.mkdir()
    assert_clean_error(_invoke(cli, args(tmp_path / "nope", out)), tmp_path / "nope", "not found")
    assert list(out.iterdir()) == []


def test_run_that_fails_in_a_resumed_folder_keeps_it(tmp_path):
    """Only what a run created is removed: a folder started earlier keeps its run.json."""
    from captioner.clitools import resolve_config
    from captioner.configbase import load_config
    from captioner.corpus import RunConfig, RunOutput, run_corpus

    cfg = load_config(RunConfig, resolve_config("run", "tiny"),
                      ["captioner.model=/nonexistent/vlm", "summarizer.model=/nonexistent/llm", "run.workers=0"])
    out = tmp_path / "run"
    RunOutput(out, cfg).close()  # an earlier run's folder (same config)
    with pytest.raises(CaptionerError, match="/nonexistent/vlm"):
        run_corpus(SAMPLES / "train", cfg, out, progress=False)
    assert (out / "run.json").is_file()


@pytest.mark.parametrize("kind", ["under a file", "wrong type", "read only"])
def test_demo_unwritable_output_fails_before_any_model(kind, tmp_path, monkeypatch):
    """The demo's first model loads in its captioning step (run_corpus); here it would fail the test."""
    import captioner.corpus

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(captioner.corpus, "run_corpus", refuse)
    out, problem = _unwritable(tmp_path, kind, "dir")
    assert_clean_error(_invoke(t2v_cli, ["demo", "--out", out]), out, problem)
    control = _invoke(t2v_cli, ["demo", "--out", tmp_path / "demo"])  # good paths reach the models
    assert isinstance(control.exception, AssertionError), control.output


def test_caption_keeps_the_record_when_the_late_write_fails(tmp_path, monkeypatch):
    """The output was fine when checked, and is not when the record is done: the record is kept in a
    new file (current folder first) and the error says where."""
    import captioner.caption

    sample = load_record(SAMPLES / "cockatoo.diffsw.json")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def caption_video(video, cfg):  # meanwhile the output folder is replaced by a file
        out_dir.rmdir()
        out_dir.write_text("not a folder any more\n")
        return sample

    monkeypatch.setattr(captioner.caption, "caption_video", caption_video)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = out_dir / "cockatoo.json"
    line = assert_clean_error(_invoke(captioner_cli, ["caption", SAMPLES / "cockatoo.mp4", "--out", out,
                                                      "--config", "tiny"]), out, "cannot write the record")
    kept = Path(line.split("saved to ")[1].removesuffix(" instead"))
    assert kept.parent == cwd and load_record(kept) == sample


@pytest.mark.parametrize("case", [
    "summarize", "export", "export-resummary", "filter", "pairs", "pairs-sft", "train-expander",
    "t2v-expand", "t2v-prepare", "t2v-train",
])
def test_other_writing_commands_check_their_output_first(case, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    record, pairs = SAMPLES / "cockatoo.diffsw.json", SAMPLES / "pairs.jsonl"
    out_file, out_dir = blocker / "out.jsonl", blocker / "out"
    no_llm = ["--config", "tiny", "--set", "summarizer.model=/nonexistent/llm"]
    cli, args, out = {
        "summarize": (captioner_cli, ["summarize", record, "--start", "0", "--end", "4", "--out", out_file, *no_llm],
                      out_file),
        "export": (captioner_cli, ["export", record, "--out", out_dir], out_dir),
        "export-resummary": (captioner_cli, ["export", record, "--out", out_dir, "--caption", "resummary", *no_llm],
                             out_dir),
        "filter": (captioner_cli, ["filter", SAMPLES / "train" / "captions.jsonl", "--out", out_dir, "--config", "tiny",
                                   "--set", "embedder.model=/nonexistent/embedder"], out_dir),
        "pairs": (captioner_cli, ["pairs", record, "--out", out_file, "--config", "tiny",
                                  "--set", "writer.model=/nonexistent/llm"], out_file),
        "pairs-sft": (captioner_cli, ["pairs", record, "--out", tmp_path / "p.jsonl", "--sft", out_file,
                                      "--config", "tiny", "--set", "writer.model=/nonexistent/llm"], out_file),
        "train-expander": (captioner_cli, ["train-expander", pairs, "--out", out_dir, "--config", "tiny"], out_dir),
        "t2v-expand": (t2v_cli, ["expand", "a cat", "--out", out_file], out_file),
        "t2v-prepare": (t2v_cli, ["prepare", "--config", "tiny", "--out", out_dir], out_dir),
        "t2v-train": (t2v_cli, ["train", "--config", "tiny", "--out", out_dir], out_dir),
    }[case]
    assert_clean_error(_invoke(cli, args), out, f"{blocker} is a file, not a folder")
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("cmd", [
    ["captioner", "caption", "samples/nope.mp4", "--out", "{tmp}/r.json", *CAPTION_MODELS],
    ["t2v", "demo", "--out", "{tmp}/blocker/demo"],
])
def test_as_a_user_runs_it_no_traceback(cmd, tmp_path):
    """The same in a real process: the user's terminal shows one line, no traceback."""
    (tmp_path / "blocker").write_text("x")
    module = {"captioner": "captioner.cli", "t2v": "t2v.cli"}[cmd[0]]
    args = [a.replace("{tmp}", str(tmp_path)) for a in cmd[1:]]
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert ("nope.mp4: video not found" if cmd[0] == "captioner" else "blocker is a file") in proc.stderr
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == '["blocker"]'
