"""A light preparer for decode-pool stress tests (no torch, no video): a clip's "path" says what to
do. ``ok-N-SIZE`` returns SIZE bytes derived from N after a short random pause; ``crash`` exits the
worker mid-decode; ``hang`` sleeps; ``sendkill-SIZE`` returns SIZE bytes and kills its own worker
while the result is being written to the pipe. Loaded in worker processes by
``DecodePool(preparer_factory="chaos_preparer:make")``."""

import os
import random
import time


def payload(n: int, size: int) -> bytes:
    """What ``ok-N-SIZE`` returns: checkable by the test."""
    return (n.to_bytes(4, "little") * (size // 4 + 1))[:size]


def _die_halfway_through_the_next_result() -> None:
    """Make this worker write half of its next large message to the result pipe, then die: it is
    killed while it holds a result."""
    from multiprocessing import connection

    def send_half(self, buf, *args):
        if len(buf) <= 16:  # the length header goes through
            return original(self, buf, *args)
        data = bytes(buf)
        os.write(self._handle, data[: len(data) // 2])
        os._exit(137)

    original = connection.Connection._send
    connection.Connection._send = send_half


class _Preparer:
    def prepare(self, video, start=None, end=None, min_duration=None):
        name = os.path.basename(str(video))
        kind, *rest = name.split("-")
        time.sleep(random.uniform(0.0, 0.02))
        if kind == "crash":
            os._exit(139)
        if kind == "hang":
            time.sleep(3600)
        if kind == "sendkill":
            _die_halfway_through_the_next_result()
            return payload(0, int(rest[0]))
        if kind == "ok":
            return payload(int(rest[0]), int(rest[1]))
        raise ValueError(f"{name}: unknown chaos instruction")


def make(config_data: dict):
    if config_data.get("hang_on_start"):
        time.sleep(3600)
    return _Preparer()
