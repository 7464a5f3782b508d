"""Files written so that nothing is ever half there: atomic writes (temporary file + rename), folder
replacement, one mode for every output, an exclusive lock per output folder, content hashes, and
UTF-8 text reading with a clear error."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

from densecap.errors import CaptionerError

log = logging.getLogger(__name__)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask has no read-only form, and setting it races with threads


def normal_mode(*paths: str | Path) -> None:
    """Give files, and every file under folders, the mode a plain ``open()`` gives (``0o666 & ~umask``).

    The one place that sets output file modes: a private temporary file (``mkstemp``) and safetensors'
    ``save_file`` (so LoRAs, checkpoints and ``save_pretrained`` folders) make owner-only 0600 files,
    and a rename keeps that mode. Every writer of such files calls this before its rename."""
    mode = 0o666 & ~_UMASK
    for p in map(Path, paths):
        for f in [p] if not p.is_dir() else (f for f in p.rglob("*") if f.is_file() and not f.is_symlink()):
            os.chmod(f, mode)


def write_json_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename, so no reader ever sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        normal_mode(tmp)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """The file's sha256 (hex), computed once per (path, size, mtime) in a process."""
    import hashlib

    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Put the finished folder ``tmp`` at ``final``; an existing ``final`` is moved aside first and removed
    after, so ``final`` is at every moment either the old folder or the new one, complete. Its files get
    the normal mode (:func:`normal_mode`)."""
    import shutil

    tmp, final = Path(tmp), Path(final)
    normal_mode(tmp)  # safetensors and mkstemp files are owner-only: the folder gets the normal mode
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


# ---------------------------------------------------------------------------------------------------
# one long run per output: an exclusive lock on the run folder (or output file)


class OutputLock:
    """An exclusive advisory lock (``flock``) on a run's output, held until :meth:`release`.

    The kernel drops the lock with the process, so a run killed by ``kill -9`` leaves no stale lock:
    the next run takes it at once. The holder's pid, host, start time and command line are written into
    the lock file, and a second run on the same output stops with one line naming them, before any
    model is loaded. The lock file is removed on release (a run that finds the file replaced under it
    locks the new one, so two runs never both hold it)."""

    def __init__(self, target: str | Path, command: str, lock_file: str | Path | None = None):
        import fcntl
        import socket
        import sys

        self.target = Path(target)
        self.path = Path(lock_file) if lock_file is not None else self.target / ".lock"
        self._fd: int | None = None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise CaptionerError(f"{self.path}: cannot create the lock file ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise CaptionerError(
                    f"{self.target}: in use by another `{command}` ({holder}); wait for it to end, or use "
                    "another --out"
                ) from None
            except OSError as exc:  # a file system without flock (some network mounts): run unlocked
                os.close(fd)
                log.warning(
                    "%s: cannot lock (%s); nothing stops a second run on the same output", self.path,
                    exc.strerror or exc)
                return
            try:
                st, now = os.fstat(fd), os.stat(self.path)
                same = (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder removed it as we locked it: lock the file now at the path
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then sees the file is gone
        except OSError:
            pass
        os.close(fd)  # drops the flock

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """``pid N on HOST, since HH:MM:SS`` from a lock file written by :class:`OutputLock`."""
    import socket

    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown: it is starting"
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    since = info.get("started")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) else ""
    return f"pid {pid}{where}{when}"


def lock_output(target: str | Path, command: str, lock_file: str | Path | None = None) -> OutputLock:
    """Take the exclusive lock of an output folder ``target`` (file ``target/.lock``, or ``lock_file``);
    raises a :class:`CaptionerError` naming the holder's pid when another run holds it. See
    :class:`OutputLock`."""
    return OutputLock(target, command, lock_file)


def read_utf8(path: str | Path, error: type[CaptionerError] = CaptionerError) -> str:
    """The text of a UTF-8 file, without a leading byte-order mark; a file in another encoding (Latin-1,
    cp1252, UTF-16) raises ``error`` naming the file, the line and the byte offset of the first byte
    that is not UTF-8."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "re-save the file as UTF-8 (in Excel: \"CSV UTF-8\")"
        ) from None
