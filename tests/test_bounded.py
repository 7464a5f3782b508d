"""Issue 12, "Bounded in time, memory and trust": one run per output folder (an flock that dies with
its process), one ``error:`` line for a full disk, a non-UTF-8 manifest and a damaged checkpoint (the
trainer falls back to the previous one), a CSV with a byte-order mark just works, records name their
videos by absolute path, a preset name is the preset, a bad manifest leaves no run folder, and every
output file has the same (umask) mode."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.cli import cli as captioner_cli
from captioner.errors import CaptionerError
from captioner.manifest import Clip, ManifestError, read_input, read_manifest
from captioner.record import (
    OutputLock,
    lock_output,
    load_record,
    normal_mode,
    replace_dir,
    save_record,
    write_json_atomic,
)
from captioner.shards import iter_jsonl, iter_records, record_files
from densecap.training import pick_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
NO_MODELS = ["--config", "tiny", "--set", "captioner.model=/nonexistent/vlm", "--set",
             "summarizer.model=/nonexistent/llm", "--set", "run.workers=0", "--no-progress"]
_UMASK = os.umask(0o022)
os.umask(_UMASK)
NORMAL = 0o666 & ~_UMASK  # what a plain open() gives
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_error_line(result) -> str:
    """Exit 1 through the CLI's error handling, stderr one ``error:`` line (no traceback)."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------------------------------
# A. one run per output folder

HOLDER = """
import sys, time
import captioner.engines.local as local
def hold(items, cfg, out, stats, progress=True):
    print("holding", flush=True)
    time.sleep(300)
local.run_local = hold
from captioner.configbase import load_config
from captioner.corpus import RunConfig, run_corpus
cfg = load_config(RunConfig, "configs/run/tiny.yaml", ["captioner.model=/nonexistent/vlm",
                  "summarizer.model=/nonexistent/llm", "run.workers=0"])
run_corpus(sys.argv[1], cfg, sys.argv[2], progress=False)
"""


def test_a_second_run_on_the_same_folder_stops_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "captioner.cli", "run", str(SAMPLES / "train"), "--out", str(out), *NO_MODELS]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(SAMPLES / "train"), str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read()  # in the run, lock held
        t0 = time.monotonic()
        second = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(f"error: {out}: in use by another `captioner run` (pid {holder.pid}"), line
        assert "/nonexistent" not in line  # stopped before any model load
        assert time.monotonic() - t0 < 60
        assert holder.poll() is None  # the holder is untouched
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # kill -9: no chance to release anything
        holder.wait(timeout=30)
    # The kernel dropped the lock with the process: the next run goes on, to the models (which fail here).
    third = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert third.returncode == 1 and "in use" not in third.stderr and "/nonexistent/vlm" in third.stderr, third.stderr
    assert not (out / ".lock").exists()  # released (and removed) on exit


def test_lock_is_released_on_close_and_by_a_failed_start(tmp_path):
    from captioner.configbase import load_config
    from captioner.corpus import RunConfig, RunOutput

    cfg = load_config(RunConfig, ROOT / "configs" / "run" / "tiny.yaml", [])
    out = tmp_path / "run"
    first = RunOutput(out, cfg)
    with pytest.raises(CaptionerError, match=rf"in use by another `captioner run` \(pid {os.getpid()}"):
        RunOutput(out, cfg)
    first.close()
    first.close()  # idempotent
    RunOutput(out, cfg).close()
    # a start refused for another reason (a different config) releases the lock it took
    with pytest.raises(CaptionerError, match="different config"):
        RunOutput(out, load_config(RunConfig, ROOT / "configs" / "run" / "tiny.yaml", ["diffsw.diff_max_new_tokens=7"]))
    RunOutput(out, cfg).close()
    assert sorted(p.name for p in out.iterdir()) == ["errors.jsonl", "run.json"]


def test_pairs_train_and_prepare_take_the_same_lock(tmp_path, t2v_tiny_models):
    from captioner.clitools import resolve_config
    from captioner.configbase import load_config
    from captioner.pairs import PairsConfig, PairsOutput, load_pairs_prompts
    from t2v.cache import LOCK_FILE, PrepareConfig, prepare_cache
    from t2v.train import load_train_config, train

    cfg = load_config(PairsConfig, resolve_config("pairs", "tiny"), [])
    prompts = load_pairs_prompts(cfg.prompts)
    pairs = tmp_path / "pairs.jsonl"
    with PairsOutput(pairs, cfg, prompts):
        with pytest.raises(CaptionerError, match=rf"{pairs}: in use by another `captioner pairs` \(pid {os.getpid()}"):
            PairsOutput(pairs, cfg, prompts)
    with PairsOutput(pairs, cfg, prompts):
        pass
    assert not pairs.with_name(".pairs.jsonl.lock").exists()

    run = tmp_path / "train"
    run.mkdir()
    with lock_output(run, "t2v train"):
        tcfg = load_train_config("tiny", [f"data.path={SAMPLES / 'train' / 'captions.jsonl'}", "logging.log_with=[]",
                                          "validation.prompts=[]"])
        with pytest.raises(CaptionerError, match=rf"{run}: in use by another `t2v train` \(pid {os.getpid()}"):
            train(tcfg, run)

    cache = tmp_path / "cache"
    cache.mkdir()
    with lock_output(cache, "t2v prepare", cache / LOCK_FILE):
        pcfg = load_config(PrepareConfig, resolve_config("prepare", "tiny"), [f"data.path={SAMPLES / 'train'}"])
        with pytest.raises(CaptionerError, match=rf"{cache}: in use by another `t2v prepare` \(pid {os.getpid()}"):
            prepare_cache(pcfg, cache)


def test_a_lock_file_replaced_under_a_waiter_is_not_shared(tmp_path):
    """The holder removes the lock file as it releases: a run that locked the old file must not go on
    beside a run that locks the new one."""
    first = OutputLock(tmp_path, "x")
    fd = os.open(first.path, os.O_RDWR)  # a second run opened the file before the first released it
    first.release()
    second = OutputLock(tmp_path, "x")  # creates and locks a new file
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old (removed) file: lockable, but it is not the lock
    os.close(fd)
    with pytest.raises(CaptionerError, match="in use"):
        OutputLock(tmp_path, "x")
    second.release()


# --------------------------------------------------------------------------------------------------
# B. a full disk, a Latin-1 manifest, a BOM, a damaged checkpoint


def _fake_engine(monkeypatch, then=None):
    """run_local that writes one record per clip without models (the sample record, keyed per clip);
    ``then(out, i)`` runs before the record of clip ``i``."""
    import captioner.engines.local

    sample = load_record(SAMPLES / "cockatoo.diffsw.json")

    def run_local(items, cfg, out, stats, progress=True):
        for i, item in enumerate(items):
            if then is not None:
                then(out, i)
            out.write_record(sample.model_copy(update={"clip_key": item.key, "config_key": out.key}))
            stats.captioned += 1

    monkeypatch.setattr(captioner.engines.local, "run_local", run_local)


def test_full_disk_while_appending_records_is_one_line_and_keeps_the_records(tmp_path, monkeypatch):
    real_write = os.write
    state = {"fd": None, "calls": 0}

    def write(fd, data):
        if fd == state["fd"]:
            state["calls"] += 1
            if state["calls"] == 1:
                return real_write(fd, bytes(data)[: len(data) // 2])  # half the line made it
            raise ENOSPC
        return real_write(fd, data)

    def arm(out, i):
        if i == 1:  # the first record is written; the disk fills during the second
            state["fd"] = out._records._fh.fileno()

    _fake_engine(monkeypatch, arm)
    monkeypatch.setattr(os, "write", write)
    out = tmp_path / "run"
    line = _one_error_line(CliRunner().invoke(captioner_cli, ["run", str(SAMPLES / "train"), "--out", str(out),
                                                              *NO_MODELS]))
    monkeypatch.undo()
    (shard,) = record_files(out)
    assert line == f"error: {shard}: cannot write (No space left on device); the lines written before are kept"
    assert shard.read_bytes().endswith(b"\n")  # the half line was cut off again
    assert len(list(iter_records(out))) == 1


FSIZE = """
import resource, signal, sys
from captioner.errors import CaptionerError
from captioner.shards import JsonlAppender
app = JsonlAppender(sys.argv[1], fsync=False)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # the kernel refuses bytes past 1000
n = 0
try:
    while True:
        app.append({"n": n, "pad": "x" * 90})
        n += 1
except CaptionerError as exc:
    print(n)
    print(exc)
"""


def test_a_write_the_kernel_refuses_is_one_error_and_leaves_whole_lines(tmp_path):
    """The same with a real refused write (a file size limit: EFBIG, as ENOSPC needs a full disk)."""
    path = tmp_path / "part.jsonl"
    proc = subprocess.run([sys.executable, "-c", FSIZE, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    n, message = proc.stdout.strip().splitlines()
    assert message == f"{path}: cannot write (File too large); the lines written before are kept"
    data = path.read_bytes()
    assert data.endswith(b"\n") and len(data) <= 1000
    assert [obj["n"] for obj in iter_jsonl(path)] == list(range(int(n))) and int(n) > 0


def test_full_disk_on_summary_json_is_one_line_and_keeps_the_records(tmp_path, monkeypatch):
    import captioner.runfolder

    real = captioner.runfolder.write_json_atomic

    def write_json_atomic(path, text):
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text)

    _fake_engine(monkeypatch)
    monkeypatch.setattr(captioner.runfolder, "write_json_atomic", write_json_atomic)
    out = tmp_path / "run"
    line = _one_error_line(CliRunner().invoke(captioner_cli, ["run", str(SAMPLES / "train"), "--out", str(out),
                                                              *NO_MODELS]))
    assert line == (f"error: {out / 'summary.json'}: cannot write (No space left on device); the records written "
                    f"so far are kept in {out / 'records'}: run the same command again to resume")
    assert len(list(iter_records(out))) == len(read_input(SAMPLES / "train"))
    assert not (out / ".lock").exists()


def _latin1_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "clips.csv"
    path.write_bytes("path,caption\n".encode() + "a.mp4,un caf\u00e9 au lait\n".encode("latin-1"))
    return path


def test_a_latin1_manifest_is_one_line_naming_file_line_and_byte(tmp_path):
    path = _latin1_manifest(tmp_path)
    with pytest.raises(ManifestError) as exc:
        read_manifest(path)
    assert str(exc.value) == (f'{path}:2: not UTF-8 text (byte 0xe9 at offset 25); re-save the file as UTF-8 '
                              '(in Excel: "CSV UTF-8")')
    jsonl = tmp_path / "clips.jsonl"
    jsonl.write_bytes(b'{"path": "a.mp4"}\n{"path": "b.mp4", "caption": "caf\xe9"}\n')
    with pytest.raises(ManifestError, match=rf"{jsonl}:2: not UTF-8 text \(byte 0xe9 at offset 51\)"):
        read_manifest(jsonl)


@pytest.mark.parametrize("value, problem", [
    (-1, "must be a finite number of seconds >= 0, got -1"),
    ("inf", "must be a finite number of seconds >= 0, got 'inf'"),
    ("soon", "must be a number of seconds or empty, got 'soon'"),
    (True, "must be a number of seconds or empty, got True"),
])
def test_a_bad_clip_time_is_one_line_naming_the_row_and_field(tmp_path, value, problem):
    """Manifests, training layouts and caption lists check clip times the same way (densecap.values)."""
    from captioner.pairs import read_captions
    from t2v.data import DataError, read_samples

    jsonl = tmp_path / "clips.jsonl"
    jsonl.write_text(json.dumps({"path": "a.mp4", "start": value}) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError) as exc:
        read_manifest(jsonl)
    assert str(exc.value) == f"{jsonl}:1: start {problem}"
    layout = tmp_path / "captions.jsonl"
    layout.write_text(json.dumps({"video": "a.mp4", "caption": "a dog", "end": value}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"captions\.jsonl:1: end {re.escape(problem)}"):
        read_samples(layout)
    captions = tmp_path / "dense.jsonl"
    captions.write_text(json.dumps({"caption": "a dog runs", "video": "a.mp4", "start": value}) + "\n", encoding="utf-8")
    with pytest.raises(CaptionerError, match=rf"dense\.jsonl:1: start {re.escape(problem)}"):
        read_captions(captions)


def test_a_csv_with_a_byte_order_mark_just_works(tmp_path):
    (tmp_path / "v").mkdir()
    for name, suffix, sep in (("excel", ".csv", ","), ("tabs", ".tsv", "\t")):
        path = tmp_path / f"{name}{suffix}"
        path.write_text(f"\ufeffpath{sep}caption\nv/a.mp4{sep}a caf\u00e9\n", encoding="utf-8")
        (clip,) = read_manifest(path)
        assert clip.path == str(tmp_path / "v" / "a.mp4") and clip.caption == "a caf\u00e9"
    jsonl = tmp_path / "clips.jsonl"
    jsonl.write_text('\ufeff{"path": "v/a.mp4"}\n', encoding="utf-8")
    assert read_manifest(jsonl)[0].path == str(tmp_path / "v" / "a.mp4")


def test_t2v_datasets_read_a_bom_and_name_a_bad_byte(tmp_path):
    from t2v.data import DataError, read_samples

    (tmp_path / "a.mp4").write_bytes(b"")
    meta = tmp_path / "metadata.csv"
    meta.write_text("\ufefffile_name,caption\na.mp4,a cat\n", encoding="utf-8")
    (spec,) = read_samples(meta)
    assert spec.video == str(tmp_path / "a.mp4") and spec.caption == "a cat"
    meta.write_bytes(b"file_name,caption\na.mp4,caf\xe9\n")
    with pytest.raises(DataError, match=rf"{meta}:2: not UTF-8 text \(byte 0xe9 at offset 27\); re-save"):
        read_samples(meta)


def _folders(tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for n in names:
        (tmp_path / n).mkdir()
        out.append(tmp_path / n)
    return out


def test_pick_checkpoint_passes_over_an_unreadable_newer_one(tmp_path, caplog):
    import torch
    from safetensors.torch import save_file

    found = _folders(tmp_path, "step-1", "step-2", "step-3")
    for p in found:
        save_file({"w": torch.zeros(4)}, str(p / "trainable.safetensors"))
        torch.save({"x": 1}, p / "optimizer.pt")
        (p / "state.json").write_text("{}")
    (found[2] / "trainable.safetensors").write_bytes(b"\x00" * 64)  # the disk filled during the save
    with caplog.at_level(logging.WARNING):
        assert pick_checkpoint(found) == found[1]
    (msg,) = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert msg.startswith(f"checkpoint {found[2]} is unreadable (trainable.safetensors: SafetensorError: ")
    assert msg.endswith(f"; resuming from {found[1]}")
    (found[1] / "optimizer.pt").write_bytes(b"PK\x03\x04 cut short")
    assert pick_checkpoint(found) == found[0]
    (found[0] / "state.json").write_text("{")
    with pytest.raises(CaptionerError, match=rf"{tmp_path}: no checkpoint can be read: step-3: trainable"):
        pick_checkpoint(found)
    assert pick_checkpoint([]) is None


@pytest.mark.usefixtures("one_torch_thread")
def test_training_resumes_from_the_previous_checkpoint_when_the_latest_is_damaged(t2v_tiny_models, tmp_path, caplog):
    from t2v.train import TrainingError, load_train_config, train

    def cfg(steps: int):
        return load_train_config("tiny", [f"data.path={SAMPLES / 'train' / 'captions.jsonl'}", "logging.log_with=[]",
                                          "validation.prompts=[]", "checkpoint.every=1", f"training.max_steps={steps}",
                                          "data.num_workers=0"])

    out = tmp_path / "run"
    first = train(cfg(2), out)
    ckpts = out / "checkpoints"
    assert [p.name for p in first.checkpoints] == ["step-1", "step-2"]

    # F: the LoRA, the checkpoints' safetensors and the JSON files all have the normal mode
    files = [out / "lora" / "pytorch_lora_weights.safetensors", ckpts / "step-2" / "trainable.safetensors",
             ckpts / "step-2" / "rng-0.safetensors", ckpts / "step-2" / "state.json", out / "metrics.jsonl"]
    assert {f.name: oct(_mode(f)) for f in files} == {f.name: oct(NORMAL) for f in files}

    (ckpts / "step-2" / "trainable.safetensors").write_bytes(b"\xff" * 16)  # damaged
    with caplog.at_level(logging.WARNING):
        again = train(cfg(3), out, resume="latest")
    assert again.resumed_from == ckpts / "step-1" and again.global_step == 3
    assert any(r.getMessage().startswith(f"checkpoint {ckpts / 'step-2'} is unreadable (trainable.safetensors: ")
               and r.getMessage().endswith(f"resuming from {ckpts / 'step-1'}") for r in caplog.records)
    assert [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    for p in ckpts.glob("step-*"):
        (p / "trainable.safetensors").write_bytes(b"")
    with pytest.raises(TrainingError, match=rf"{ckpts}: no checkpoint can be read: step-3: "):
        train(cfg(4), out, resume="latest")
    with pytest.raises(TrainingError, match=rf"{ckpts / 'step-3'}: the checkpoint cannot be read \(trainable"):
        train(cfg(4), out, resume=str(ckpts / "step-3"))  # a named one: no fallback


# --------------------------------------------------------------------------------------------------
# C. records name their videos by absolute path


def test_a_folder_input_gives_absolute_paths_with_unchanged_keys(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.mp4").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    (clip,) = read_input("corpus")
    assert clip.path == str(tmp_path / "corpus" / "a.mp4")
    # the resume key of a clip listed by a relative path (run folders made before) is the same
    assert Clip("corpus/a.mp4").key() == clip.key()


@pytest.mark.usefixtures("one_torch_thread")
def test_run_in_one_folder_export_from_another_nothing_missing(media, tiny_models, tmp_path, monkeypatch):
    import shutil

    from captioner.configbase import load_config
    from captioner.corpus import RunConfig, run_corpus
    from captioner.export import export_dataset

    work = tmp_path / "work"
    (work / "corpus").mkdir(parents=True)
    shutil.copy(media["static"], work / "corpus" / "static.mp4")
    cfg = load_config(RunConfig, ROOT / "configs" / "run" / "tiny.yaml", ["run.workers=0"])
    monkeypatch.chdir(work)
    assert run_corpus("corpus", cfg, "run", progress=False)["captioned"] == 1
    (record,) = iter_records(work / "run")
    assert record.video.path == str(work / "corpus" / "static.mp4")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = export_dataset(work / "run", elsewhere / "dataset", formats=["jsonl"])
    assert result.exported == 1 and not any(result.skipped.values()), result.skipped
    # the same run resumes from anywhere, also named by an absolute path
    again = run_corpus(work / "corpus", cfg, work / "run", progress=False)
    assert again["already_done"] == 1 and again["captioned"] == 0


# --------------------------------------------------------------------------------------------------
# D. a preset name is the preset


def test_a_bare_name_is_the_preset_even_with_a_file_of_that_name_here(tmp_path, monkeypatch, caplog):
    from captioner.clitools import CONFIGS_DIR, resolve_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text("captioner: {model: /somewhere/else}\n")
    with caplog.at_level(logging.INFO, logger="densecap.config"):
        assert resolve_config("run", "tiny") == CONFIGS_DIR / "run" / "tiny.yaml"
    assert any("write ./tiny" in r.getMessage() for r in caplog.records)
    assert resolve_config("run", "./tiny") == Path("./tiny")  # a path is a path
    (tmp_path / "mine").write_text("{}\n")
    assert resolve_config("run", "mine") == Path("mine")  # no such preset: the file
    assert resolve_config("run", "other.yaml") == Path("other.yaml")
    with pytest.raises(CaptionerError, match="no such file, and no preset"):
        resolve_config("run", "nothing")


# --------------------------------------------------------------------------------------------------
# E. a bad manifest leaves nothing behind


@pytest.mark.parametrize("bad", ["row", "encoding", "column"])
@pytest.mark.parametrize("existing", [False, True])
def test_a_bad_manifest_leaves_no_run_files(bad, existing, tmp_path):
    manifest = tmp_path / "clips.csv"
    if bad == "encoding":
        manifest = _latin1_manifest(tmp_path)
        problem = "clips.csv:2: not UTF-8 text"
    elif bad == "row":
        manifest.write_text("path,start,end\na.mp4,4,2\n")
        problem = "clips.csv:2: clip end 2s is not after start 4s"
    else:
        manifest.write_text("file,caption\na.mp4,a cat\n")
        problem = "clips.csv: header has no video path column"
    out = tmp_path / "run"
    if existing:
        out.mkdir()
    line = _one_error_line(CliRunner().invoke(captioner_cli, ["run", str(manifest), "--out", str(out), *NO_MODELS]))
    assert problem in line
    assert (sorted(out.iterdir()) == []) if existing else not out.exists()


# --------------------------------------------------------------------------------------------------
# F. one file mode


def test_every_writer_gives_the_normal_mode(tmp_path):
    import torch
    from safetensors.torch import save_file

    record = save_record(load_record(SAMPLES / "cockatoo.diffsw.json"), tmp_path / "r.json")
    sidecar = write_json_atomic(tmp_path / "v.json", "{}\n")
    tmp = tmp_path / ".tmp-step-1"
    tmp.mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp / "trainable.safetensors"))  # safetensors writes 0600
    (tmp / "adapter").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp / "adapter" / "adapter_model.safetensors"))
    replace_dir(tmp, tmp_path / "step-1")  # how both trainers put a checkpoint in place
    files = [record, sidecar, tmp_path / "step-1" / "trainable.safetensors",
             tmp_path / "step-1" / "adapter" / "adapter_model.safetensors"]
    assert [oct(_mode(f)) for f in files] == [oct(NORMAL)] * len(files)
    lone = tmp_path / "lone.safetensors"
    save_file({"w": torch.zeros(2)}, str(lone))
    normal_mode(lone)
    assert _mode(lone) == NORMAL


def test_a_cache_shard_follows_the_umask(tmp_path, monkeypatch):
    """The mode comes from the umask (a group-writable 002 setup gets 0664), not a fixed 0644."""
    import torch

    import densecap.files
    from t2v.cache import _save_atomic

    monkeypatch.setattr(densecap.files, "_UMASK", 0o002)
    _save_atomic({"w": torch.zeros(2)}, tmp_path / "shard-00000.safetensors", {"format": "pt"})
    assert oct(_mode(tmp_path / "shard-00000.safetensors")) == oct(0o664)
