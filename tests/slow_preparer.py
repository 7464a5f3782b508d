"""A preparer for decode-pool tests: hangs on files whose name contains "hang", crashes the worker
process on "crash", and prepares every other file normally. Loaded in worker processes by
``DecodePool(preparer_factory="slow_preparer:make")``."""

import os
import time

from captioner.caption import CaptionConfig, ClipPreparer


class _Preparer(ClipPreparer):
    def prepare(self, video, start=None, end=None, min_duration=None):
        name = os.path.basename(str(video))
        if "hang" in name:
            time.sleep(3600)
        if "crash" in name:
            os._exit(139)  # like a segfault inside a decoder
        return super().prepare(video, start, end, min_duration=min_duration)


def make(config_data: dict):
    return _Preparer(CaptionConfig.model_validate(config_data))
