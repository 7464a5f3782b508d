"""The decode pool under attack: workers killed at random points (idle, mid-decode, while writing a
result), workers that never start, and a parent killed with kill -9. Nothing may hang, no clip may
be lost or answered twice, and no worker may outlive its parent.

The workers run ``tests/chaos_preparer.py`` (no torch, no video) so that hundreds of restarts fit
in a test; the real preparer is covered by test_corpus.py."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from captioner.engines.decode_pool import DecodePool
from captioner.errors import CaptionerError
from captioner.manifest import Clip
from chaos_preparer import payload

TESTS = Path(__file__).resolve().parent


def _drain(pool: DecodePool, deadline_s: float) -> dict[int, object]:
    """Poll until every submitted clip is answered; fail (not hang) past the deadline, and fail on
    a clip answered twice."""
    results: dict[int, object] = {}
    deadline = time.monotonic() + deadline_s
    while pool.outstanding:
        assert time.monotonic() < deadline, f"pool still holds {pool.outstanding} clip(s) after {deadline_s}s"
        t0 = time.monotonic()
        for r in pool.poll(timeout=0.2):
            assert r.task_id not in results, f"clip {r.task_id} answered twice"
            results[r.task_id] = r
        assert time.monotonic() - t0 < 5.0, "poll() overran its timeout"
    return results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by a parent that is itself gone) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_worker_killed_while_writing_its_result_wedges_no_one():
    pool = DecodePool({}, workers=2, timeout_s=10.0, preparer_factory="chaos_preparer:make")
    try:
        pool.submit(0, Clip("sendkill-40000000"))  # dies halfway through a 40 MB result, twice
        for i in range(1, 9):
            pool.submit(i, Clip(f"ok-{i}-{300_000 * i}"))
        results = _drain(pool, 90)
        assert "decode worker died (exit code 137) on this file" in results[0].error
        assert "sendkill-40000000" in results[0].error
        for i in range(1, 9):
            assert results[i].error is None and results[i].prepared == payload(i, 300_000 * i)
    finally:
        pool.close()


def test_a_worker_that_dies_once_costs_no_clip_a_crashing_file_fails_a_hanging_one_times_out():
    pool = DecodePool({}, workers=2, timeout_s=3.0, preparer_factory="chaos_preparer:make")
    try:
        pool.submit(0, Clip("crash"))
        pool.submit(1, Clip("hang"))
        for i in range(2, 6):
            pool.submit(i, Clip(f"ok-{i}-1000"))
        results = _drain(pool, 60)
        assert results[0].error == "crash: decode worker died (exit code 139) on this file"
        assert results[1].error == "hang: decoding took longer than 3s (worker killed)"
        assert all(results[i].prepared == payload(i, 1000) for i in range(2, 6))
    finally:
        pool.close()


@pytest.mark.slow
def test_200_random_worker_kills_never_hang_and_lose_no_clip():
    """A killer thread SIGKILLs a random ready worker (idle before taking a task, mid-decode, or
    while sending a result of up to 4 MB) 200 times while clips keep flowing."""
    pool = DecodePool({}, workers=2, timeout_s=20.0, start_timeout_s=60.0, preparer_factory="chaos_preparer:make")
    rng = random.Random(1234)
    kills: list[str] = []
    killed: set[int] = set()
    stop = threading.Event()

    def killer() -> None:
        while len(kills) < 200 and not stop.is_set():
            time.sleep(rng.uniform(0.005, 0.06))
            ready = [(pid, state) for pid, state in pool.worker_states().items()
                     if state != "starting" and pid not in killed]  # a killed worker is listed until reaped
            if not ready:
                continue
            pid, state = rng.choice(ready)
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
                kills.append(state)
            except ProcessLookupError:
                pass

    sizes = {}
    results: dict[int, object] = {}
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        next_id = 0
        deadline = time.monotonic() + 300
        while thread.is_alive() or pool.outstanding:
            assert time.monotonic() < deadline, f"{len(kills)} kills, {pool.outstanding} clip(s) still outstanding"
            if thread.is_alive() and pool.outstanding == 0:  # bursts, so that workers are sometimes idle
                for _ in range(rng.randint(1, 6)):
                    sizes[next_id] = rng.choice([100, 50_000, 1_000_000, 4_000_000])
                    pool.submit(next_id, Clip(f"ok-{next_id}-{sizes[next_id]}"))
                    next_id += 1
            t0 = time.monotonic()
            for r in pool.poll(timeout=0.1):
                assert r.task_id not in results, f"clip {r.task_id} answered twice"
                results[r.task_id] = r
            assert time.monotonic() - t0 < 5.0, "poll() overran its timeout"
    finally:
        stop.set()
        thread.join(timeout=10)
    try:
        assert len(kills) == 200 and {"idle", "busy"} <= set(kills)
        assert sorted(results) == list(range(next_id)), "a clip was lost"
        failed = [r for r in results.values() if r.error is not None]
        for r in failed:  # a clip fails only when its worker was killed twice in a row
            assert "decode worker died" in r.error and r.clip.path in r.error
        for r in results.values():
            if r.error is None:
                assert r.prepared == payload(r.task_id, sizes[r.task_id])
        # every kill replaced its worker; a clip killed once was tried again, and most of those made it
        assert pool.restarts >= 200 and pool.retried >= len(failed) and pool.retried - len(failed) > len(failed) / 2
        # after the storm the pool works as new
        for i in range(next_id, next_id + 4):
            pool.submit(i, Clip(f"ok-{i}-1000"))
        after = _drain(pool, 60)
        assert all(after[i].prepared == payload(i, 1000) for i in after)
        pids = list(pool.worker_states())
    finally:
        pool.close()
    assert not any(_alive(pid) for pid in pids)


def test_a_worker_that_never_becomes_ready_is_replaced_and_then_the_pool_gives_up():
    pool = DecodePool({"hang_on_start": True}, workers=1, timeout_s=5.0, start_timeout_s=1.0,
                      preparer_factory="chaos_preparer:make")
    pool.submit(0, Clip("ok-0-10"))
    t0 = time.monotonic()
    try:
        with pytest.raises(CaptionerError, match=r"decode workers keep failing to start: the last one did not start within 1s"):
            _drain(pool, 60)
    finally:
        pool.close()
    assert time.monotonic() - t0 < 30


_ORPHAN_SCRIPT = """
import sys, threading, time
sys.path.insert(0, {tests!r})
from captioner.engines.decode_pool import DecodePool
from captioner.manifest import Clip

def main():
    pool = DecodePool({{}}, workers=2, timeout_s=600, preparer_factory="chaos_preparer:make")
    pool.submit(0, Clip("hang"))  # one worker mid-decode, the other idle
    while len(pool.worker_states()) < 2 or "busy" not in pool.worker_states().values():
        pool.poll(timeout=0.1)
    print(" ".join(map(str, pool.worker_states())), flush=True)
    time.sleep(3600)

if __name__ == "__main__":
    if {in_thread!r}:
        threading.Thread(target=main).start()
    else:
        main()
"""


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "other-thread"])
def test_workers_exit_when_the_parent_is_killed(tmp_path, in_thread):
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_SCRIPT.format(tests=str(TESTS), in_thread=in_thread))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids), line
    finally:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in pids if _alive(p)]
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    assert not survivors, "decode workers outlived their parent"
