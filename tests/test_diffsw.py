"""DiffSW session logic: which requests go out, in what order, with what context and images."""

from __future__ import annotations

import pytest
from PIL import Image

from captioner.backends.base import ChatBackend, Message
from captioner.diffsw import DiffSWConfig, DiffSWSession, format_time, run_sessions, stack_pair
from captioner.prompts import load_prompts


class RecordingBackend(ChatBackend):
    """Answers every conversation with a label and records the calls (a backend double for logic tests)."""

    name = "recording"

    def __init__(self, label: str):
        self.label = label
        self.calls: list[list[list[Message]]] = []

    def generate(self, conversations, *, max_new_tokens=None):
        self.calls.append([list(c) for c in conversations])
        n = sum(len(c) for c in self.calls)
        return [f"{self.label}-{n - len(conversations) + i}" for i in range(len(conversations))]

    def describe(self):
        return {"backend": self.name, "model": self.label}

    @property
    def supports_images(self):
        return True

    def close(self):
        pass


def _frames(n):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    return [Image.new("RGB", (32, 24), colors[i % len(colors)]) for i in range(n)]


def _texts(message: Message) -> str:
    return " ".join(p for p in message.content if isinstance(p, str))


def _images(message: Message):
    return [p for p in message.content if isinstance(p, Image.Image)]


@pytest.fixture(scope="module")
def prompts():
    return load_prompts("diffsw-v1")


def test_format_time():
    assert format_time(0) == "00:00.0"
    assert format_time(75.25) == "01:15.2"
    assert format_time(3723) == "1:02:03.0"


def test_sequential_session_passes_previous_caption_as_context(prompts):
    frames, times = _frames(4), [0.0, 2.0, 4.5, 6.5]
    session = DiffSWSession(frames, times, 8.0, prompts, DiffSWConfig())
    vlm, llm = RecordingBackend("vlm"), RecordingBackend("llm")
    run_sessions([session], vlm, llm)

    assert session.done
    # The first caption and the first pair are ready at once (two calls: their token budgets differ),
    # then one pair per call, since each needs the previous pair's caption.
    assert [len(c) for c in vlm.calls] == [1, 1, 1, 1]
    (first_conv,), (pair0,) = vlm.calls[0], vlm.calls[1]
    assert _images(first_conv[-1]) == [frames[0]]
    assert "00:00.0" in _texts(first_conv[-1])
    assert _images(pair0[-1]) == [frames[0], frames[1]]
    assert "00:00.0" in _texts(pair0[-1]) and "00:02.0" in _texts(pair0[-1])
    assert "previous interval" not in _texts(pair0[-1])
    pair1 = vlm.calls[2][0]
    assert _images(pair1[-1]) == [frames[1], frames[2]]
    assert session.diff_captions[0] in _texts(pair1[-1])  # previous differential caption is the context
    assert "00:04.5" in _texts(pair1[-1])
    pair2 = vlm.calls[3][0]
    assert session.diff_captions[1] in _texts(pair2[-1])

    # The summary goes to the summariser, with every caption in time order.
    assert len(llm.calls) == 1 and len(llm.calls[0]) == 1
    summary_prompt = _texts(llm.calls[0][0][-1])
    assert not _images(llm.calls[0][0][-1])
    positions = [summary_prompt.index(t) for t in [session.first_caption, *session.diff_captions]]
    assert positions == sorted(positions)
    assert "00:08.0" in summary_prompt  # duration
    assert session.summary == "llm-0"
    assert session.model_calls == {"first": 1, "diff": 3, "summary": 1}


def test_without_context_all_pairs_go_out_at_once(prompts):
    session = DiffSWSession(_frames(5), [0, 2, 4, 6, 8], 9.0, prompts, DiffSWConfig(previous_context=False))
    vlm = RecordingBackend("vlm")
    run_sessions([session], vlm)  # no summariser: the captioner summarises
    assert [len(c) for c in vlm.calls] == [1, 4, 1]  # first, all 4 pairs in one call, then the summary
    assert all("previous interval" not in _texts(conv[-1]) for conv in vlm.calls[1])


def test_stacked_pairs_send_one_image(prompts):
    frames = _frames(2)
    session = DiffSWSession(frames, [0.0, 2.0], 3.0, prompts, DiffSWConfig(pair_mode="stacked", stack_gap=10))
    vlm = RecordingBackend("vlm")
    run_sessions([session], vlm)
    pair = vlm.calls[1][0][-1]
    (img,) = _images(pair)
    assert img.size == (32 + 10 + 32, 24)
    assert img.getpixel((0, 0)) == (255, 0, 0) and img.getpixel((73, 23)) == (0, 255, 0)
    assert img.getpixel((36, 10)) == (16, 16, 16)
    assert "left" in _texts(pair)


def test_stack_pair_centres_shorter_frame():
    out = stack_pair(Image.new("RGB", (10, 20), "red"), Image.new("RGB", (10, 10), "blue"), gap=2)
    assert out.size == (22, 20)
    assert out.getpixel((15, 10)) == (0, 0, 255) and out.getpixel((15, 1)) == (16, 16, 16)


def test_single_keyframe_still_gets_a_summary(prompts):
    session = DiffSWSession(_frames(1), [0.0], 1.2, prompts, DiffSWConfig())
    vlm = RecordingBackend("vlm")
    run_sessions([session], vlm)
    assert session.diff_captions == [] and session.summary
    assert "single keyframe" in _texts(vlm.calls[-1][0][-1])


def test_many_sessions_are_batched_together(prompts):
    sessions = [DiffSWSession(_frames(n), [2.0 * i for i in range(n)], 2.0 * n, prompts, DiffSWConfig()) for n in (1, 3, 4)]
    vlm, llm = RecordingBackend("vlm"), RecordingBackend("llm")
    run_sessions(sessions, vlm, llm)
    assert all(s.done for s in sessions)
    # step 1: 3 first captions, 2 first pairs; step 2: 2 second pairs; step 3: the last pair.
    assert [len(c) for c in vlm.calls] == [3, 2, 2, 1]
    assert sum(len(c) for c in llm.calls) == 3
    assert len({s.summary for s in sessions}) == 3


def test_session_rejects_mismatched_times(prompts):
    with pytest.raises(ValueError):
        DiffSWSession(_frames(2), [0.0], 2.0, prompts, DiffSWConfig())
