"""Building the tiny offline models: the English text their tokenizers are trained on, and build
folders that appear whole or not at all (``build_atomically``), shared by the captioning models
(captioner.tiny) and the video pipelines (t2v.tiny)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["build_atomically", "read_build_marker", "tokenizer_corpus"]

MARKER = ".densecap-tiny-complete.json"

# A fixed English text for training the BPE. Its content only matters in that it is English prose
# of the kind the models see (video descriptions and instructions), so common words become tokens.
_CORPUS_PARAGRAPHS = (
    "A woman in a red coat walks along a quiet street at dawn. The camera follows her from behind, "
    "then slowly moves to the side as she turns the corner. Light from the shop windows falls on the "
    "wet pavement, and a few cars pass in the background.",
    "Describe the video in detail. Mention the people, the objects, the setting, the colors, the "
    "lighting, the camera movement and every change that happens between the frames. Be precise "
    "about the order of events and do not invent anything that is not visible.",
    "In the first frame, a small brown dog sits on a green lawn next to a wooden fence. In the second "
    "frame, the dog stands up and runs toward a child who is holding a yellow ball. The camera pans "
    "to the right to keep both of them in view.",
    "Compared with the previous keyframe, the scene has become darker. The sun is setting behind the "
    "mountains, the sky turns orange and purple, and the lights of the town begin to appear in the "
    "valley below. The camera remains static throughout the shot.",
    "Two men are cooking in a busy kitchen. One of them chops onions on a cutting board while the "
    "other stirs a large pot of soup. Steam rises from the stove, and plates are stacked on the "
    "counter near the window.",
    "The differences between these two images are: the car has moved forward, a cyclist has entered "
    "from the left, the traffic light changed from red to green, and the camera zoomed in slightly.",
    "Summarize the captions of all the frames into one coherent paragraph that describes the whole "
    "video from beginning to end, including the background, the main subjects, their actions and "
    "the movement of the camera.",
    "A close-up shot of a hand writing on a sheet of white paper with a black pen. The text is "
    "written slowly, letter by letter, and the shadow of the pen moves across the page.",
    "Aerial view of a long beach with white sand and clear blue water. Waves break gently on the "
    "shore, people walk near the water, and a boat sails far away near the horizon.",
    "The video shows a city at night: tall buildings with bright windows, streets full of traffic, "
    "and a bridge over a river that reflects the colorful lights. The camera slowly flies forward "
    "over the river toward the center of the city.",
    "An old man reads a newspaper on a bench in the park. Pigeons gather around his feet, and "
    "children play on the grass behind him. Leaves fall from the trees as the wind blows.",
    "Here is a short caption. Please expand it into a detailed description suitable for generating "
    "a video: describe the subject, its appearance, the action, the environment, the style, the "
    "lighting and the camera angle in a few sentences.",
    "A cat jumps onto a table, knocks over a glass of water, and quickly runs out of the room. The "
    "water spreads across the table and drips onto the floor.",
    "Snow falls over a forest of tall pine trees. A deer walks slowly between the trees, stops to "
    "look at the camera, and then disappears into the mist.",
    "A chef places a slice of cake on a white plate, adds fresh strawberries and a spoon of cream, "
    "and pushes the plate toward the camera. The background is blurred.",
    "Numbers and dates appear as well: 1, 2, 3, 10, 25, 100, 2024, 12:30, 3.5 seconds, 60 frames "
    "per second, 1920x1080 pixels, and the time stamps 00:00:05 and 00:01:20.",
)

_SUBJECTS = (
    "a young girl",
    "the old dog",
    "a tall man",
    "two birds",
    "a white car",
    "the train",
    "a group of students",
    "the red balloon",
    "a small boat",
    "the robot",
)
_VERBS = (
    "moves slowly across",
    "jumps over",
    "stands next to",
    "runs along",
    "looks at",
    "turns around near",
    "flies above",
    "waits beside",
    "rolls down",
    "appears behind",
)
_PLACES = (
    "the bridge",
    "the river",
    "a wooden table",
    "the open door",
    "the busy road",
    "a snowy hill",
    "the garden",
    "the station",
    "a bright window",
    "the dark tunnel",
)
_CAMERA = (
    "while the camera pans left",
    "as the camera zooms in",
    "in a wide static shot",
    "seen from above",
    "in slow motion",
)


def tokenizer_corpus() -> str:
    """English prose (video descriptions and instructions) to train a tiny BPE tokenizer on."""
    lines = list(_CORPUS_PARAGRAPHS)
    for i, s in enumerate(_SUBJECTS):
        for j, v in enumerate(_VERBS):
            p = _PLACES[(i + 3 * j) % len(_PLACES)]
            c = _CAMERA[(i + j) % len(_CAMERA)]
            lines.append(f"{s[0].upper()}{s[1:]} {v} {p} {c}.")
    return "\n".join(lines) + "\n"



def read_build_marker(path: Path, marker: str = MARKER) -> dict | None:
    """The marker a finished atomic build left in ``path`` (None when absent or unreadable)."""
    try:
        info = json.loads((Path(path) / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def build_atomically(out_dir: Path, fill, marker_info: dict, *, marker: str = MARKER, done=None, quiet=None) -> Path:
    """Build into a temporary sibling folder with ``fill(folder)``, write ``marker_info`` into the
    marker file last, then move the folder into place: a killed build never looks finished.

    ``done(out_dir)`` tells whether a build another process moved in meanwhile is complete (then it
    is kept); ``quiet`` is a context manager silencing progress output while filling.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        with quiet() if quiet is not None else contextlib.nullcontext():
            fill(tmp)
        marker_tmp = tmp / (marker + ".tmp")
        marker_tmp.write_text(json.dumps(marker_info, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(marker_tmp, tmp / marker)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # another process moved its own (identical) build in between: keep that one
            if done is None or not done(out_dir):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


