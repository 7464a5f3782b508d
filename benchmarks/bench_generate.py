"""Overhead of ``t2v.generate.generate_videos`` over a plain diffusers pipeline call, on the CPU.

One pipeline (the tiny random Wan of ``t2v.tiny``, run at a larger video than the tests use so that
one call takes over a second) is loaded once; then, on that same pipeline, with the same prompt, seed
and settings (``--frames``, ``--size``, ``--steps``, guidance 5.0, so with classifier-free guidance),
four ways of making one video are timed, ``--reps`` times each, interleaved (a new random order every
repetition, so that no way always runs first or right after another; ``--pause`` seconds of rest before
each, so that the previous mp4 encoder's process does not slow the next call):

1. *plain call*: ``pipe(prompt=..., generator=torch.Generator("cpu").manual_seed(0), ..., output_type="np")``;
2. *generate_videos, no mp4*: ``generate_videos(cfg, [prompt], out, pipeline=pipe)`` with the mp4
   encoder replaced by a no-op: everything ``generate_videos`` does per video except encoding (config
   and model resolution, the resume check, the prompt's token count, the generator, the call, the
   JSON sidecar written atomically);
3. *plain call + write_mp4*: (1) followed by ``t2v.videoio.write_mp4`` of its frames;
4. *generate_videos*: all of it, the mp4 included.

(``overwrite: true``, so every repetition makes its video.) Overheads: (2) against (1), and (4)
against (3), as the median over repetitions of the ratio of the two times of one repetition (and the
ratio of medians); and, measured directly, ``generate_videos``' own work: its time less the time spent
inside the pipeline call and the mp4 writer. The frames of (1), (2) and (4) are checked to be equal.
Also timed, ``--load-reps`` times interleaved: ``load_pipeline(cfg)`` against
``WanPipeline.from_pretrained(path)``.

    python benchmarks/bench_generate.py [--quick] [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SECTION = "## Generation overhead"
PROMPT = "A white cockatoo raises its crest and turns its head towards the camera."


def make_config(frames: int, height: int, width: int, steps: int):
    from t2v.generate import GenerateConfig

    return GenerateConfig.model_validate({
        "model": {"family": "wan", "id": "tiny://wan"},
        "seed": 0, "num_frames": frames, "height": height, "width": width, "num_inference_steps": steps,
        "guidance_scale": 5.0, "fps": 16, "dtype": "float32", "device": "cpu", "overwrite": True,
    })


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: small video, 3 repetitions")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", default="128x128", help="HEIGHTxWIDTH")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15, help="repetitions of each of the four ways")
    ap.add_argument("--load-reps", type=int, default=5, help="repetitions of each way of loading")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds of rest before each timed video")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared 2-core box)")
    ap.add_argument("--write-docs", action="store_true", help=f"write the table into docs/benchmarks.md under '{SECTION}'")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.size, args.steps, args.reps, args.load_reps = 9, "64x64", 4, 3, 2
    height, width = (int(x) for x in args.size.lower().split("x"))

    import logging

    import diffusers
    import numpy as np
    import torch
    from diffusers import WanPipeline
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    df_logging.set_verbosity_error()
    df_logging.disable_progress_bar()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)

    import t2v.generate as G
    from t2v.videoio import write_mp4

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        work = Path(tmp)
        os.environ["DENSECAP_TINY_DIR"] = str(work / "tiny")  # tiny://wan is built here
        cfg = make_config(args.frames, height, width, args.steps)
        path = G.resolve_model(cfg).path

        # model loading ---------------------------------------------------------------------
        def load_plain():
            pipe = WanPipeline.from_pretrained(path)
            pipe.set_progress_bar_config(disable=True)
            return pipe

        loads: dict[str, list[float]] = {"plain": [], "load_pipeline": []}
        for r in range(args.load_reps):
            order = [("plain", load_plain), ("load_pipeline", lambda: G.load_pipeline(cfg))]
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                loads[name].append(timed(fn)[0])

        # one video -------------------------------------------------------------------------
        pipe = G.load_pipeline(cfg)
        kwargs = G.pipeline_kwargs(G.resolved_settings(cfg, "wan"))

        def plain():
            gen = torch.Generator("cpu").manual_seed(0)
            return pipe(prompt=PROMPT, generator=gen, **kwargs).frames[0]

        def plain_mp4():
            frames = plain()
            write_mp4(work / "plain.mp4", frames, 16)
            return frames

        real_write, real_run = G.write_mp4, G.run_pipeline
        inside: dict[str, float] = {}  # seconds spent in the pipeline call and the mp4 writer, last call

        def timed_run(*a, **k):
            t, out = timed(lambda: real_run(*a, **k))
            inside["call"] = t
            return out

        def timed_write(*a, **k):
            t, out = timed(lambda: real_write(*a, **k))
            inside["mp4"] = t
            return out

        def gen_no_mp4():
            G.write_mp4 = lambda *a, **k: None
            try:
                return G.generate_videos(cfg, [PROMPT], work / "no-mp4", pipeline=pipe)[0].frames
            finally:
                G.write_mp4 = real_write

        def gen_full():
            return G.generate_videos(cfg, [PROMPT], work / "full", pipeline=pipe)[0].frames

        ways = [("plain call", plain), ("generate_videos, no mp4", gen_no_mp4),
                ("plain call + write_mp4", plain_mp4), ("generate_videos", gen_full)]
        for _, fn in ways:  # warm-up (first-call allocations, lazy imports)
            fn()
        times: dict[str, list[float]] = {name: [] for name, _ in ways}
        own: list[float] = []  # generate_videos' own work: its time less the call and the mp4 writer
        outputs: dict[str, object] = {}
        rng = random.Random(0)
        for r in range(args.reps):
            order = rng.sample(ways, len(ways))  # a new order every repetition: no way always follows another
            for name, fn in order:
                time.sleep(args.pause)  # let the last mp4 encoder's process go before timing the next way
                if name == "generate_videos":
                    G.run_pipeline, G.write_mp4 = timed_run, timed_write
                try:
                    t, outputs[name] = timed(fn)
                finally:
                    G.run_pipeline, G.write_mp4 = real_run, real_write
                times[name].append(t)
                if name == "generate_videos":
                    own.append(t - inside["call"] - inside["mp4"])
            print(f"rep {r}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n, _ in ways), flush=True)
        if not (np.array_equal(outputs["plain call"], outputs["generate_videos, no mp4"])
                and np.array_equal(outputs["plain call"], outputs["generate_videos"])):
            raise SystemExit("generate_videos made other frames than the plain call")

    med = {n: statistics.median(v) for n, v in times.items()}
    best = {n: min(v) for n, v in times.items()}

    def paired(a: str, b: str) -> float:
        """Median over repetitions of a's time / b's time in the same repetition, less 1."""
        return statistics.median(x / y for x, y in zip(times[a], times[b])) - 1

    call_over = paired("generate_videos, no mp4", "plain call")
    full_over = paired("generate_videos", "plain call + write_mp4")
    own_s = statistics.median(own)
    own_share = own_s / med["plain call"]
    load_plain_s, load_ours_s = statistics.median(loads["plain"]), statistics.median(loads["load_pipeline"])
    threads = torch.get_num_threads()
    cmd = " ".join(["python", "benchmarks/bench_generate.py", *(sys.argv[1:] if argv is None else argv)])

    def verdict(x: float) -> str:
        return "met" if x <= 0.02 else "not met"

    def pct(x: float) -> str:
        return f"{x * 100:+.2f} %"

    lines = [
        SECTION,
        "",
        textwrap.fill(
            "What `t2v.generate.generate_videos` adds to a plain diffusers call, on one loaded pipeline: the tiny "
            f"random Wan of `t2v.tiny` (1-layer transformer) at {args.frames} frames of {height}x{width}, "
            f"{args.steps} steps, guidance 5.0 (classifier-free guidance: two transformer passes a step), float32, "
            "CPU, one prompt, seed 0. *No mp4*: `generate_videos` with the mp4 encoder replaced by a no-op (config "
            "and model resolution, resume check, token count, generator, call, atomic JSON sidecar); its baseline "
            "is the plain call. The full `generate_videos` is compared with the plain call followed by the same "
            f"`write_mp4`. {args.reps} repetitions of each, interleaved (a new random order every repetition, "
            f"{args.pause} s of rest before each), after one warm-up each; the frames of both paths are checked "
            "equal. *Paired*: the median over repetitions of the ratio of the two times measured in the same "
            "repetition (this cancels the drift of the machine's load). *Own work*: the time of the full "
            "`generate_videos` less the time spent inside the pipeline call and `write_mp4` (timed in the same "
            f"calls). Loading: medians of {args.load_reps} interleaved loads each (after the first build of the "
            "tiny model).", width=104, break_on_hyphens=False),
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {common.machine(f'torch {torch.__version__} ({threads} thread(s))', f'diffusers {diffusers.__version__}')}.",
        "",
        "| way | median (s) | fastest (s) | paired vs its baseline |",
        "| --- | ---: | ---: | ---: |",
        f"| plain `pipe(...)` call | {med['plain call']:.3f} | {best['plain call']:.3f} | baseline |",
        f"| `generate_videos`, no mp4 | {med['generate_videos, no mp4']:.3f} | {best['generate_videos, no mp4']:.3f} "
        f"| {pct(call_over)} |",
        f"| plain call + `write_mp4` | {med['plain call + write_mp4']:.3f} | {best['plain call + write_mp4']:.3f} "
        "| baseline |",
        f"| `generate_videos` (mp4 + sidecar) | {med['generate_videos']:.3f} | {best['generate_videos']:.3f} "
        f"| {pct(full_over)} |",
        f"| load: `WanPipeline.from_pretrained` | {load_plain_s:.3f} | {min(loads['plain']):.3f} | baseline |",
        f"| load: `load_pipeline` | {load_ours_s:.3f} | {min(loads['load_pipeline']):.3f} "
        f"| {pct(load_ours_s / load_plain_s - 1)} (median ratio) |",
        "",
        f"* `generate_videos`' own work per video: **{own_s * 1e3:.1f} ms**, {own_share * 100:.2f} % of the plain "
        f"call (goal <= 2 %: {verdict(own_share)}).",
        f"* Paired overhead, no mp4: **{pct(call_over)}**; with mp4 and sidecar: **{pct(full_over)}** (goal <= 2 %: "
        f"{verdict(call_over)}, {verdict(full_over)}; both include the machine's noise, see below).",
        f"* Ratio of medians: no mp4 {pct(med['generate_videos, no mp4'] / med['plain call'] - 1)}, with mp4 "
        f"{pct(med['generate_videos'] / med['plain call + write_mp4'] - 1)}.",
        f"* Encoding the mp4 (libx264) takes about {(med['plain call + write_mp4'] - med['plain call']) * 1e3:.0f} ms: "
        "work, not overhead, the same in both paths.",
        "",
        textwrap.fill(
            "Reading the figures. The own-work figure is the direct measurement: config and model resolution (a "
            "JSON read of `model_index.json`, the `tiny://` lookup), the resume check, the pipeline's execution "
            "device, a tokenizer pass to count the prompt's tokens and the sidecar's JSON write: a few "
            "milliseconds that do not grow with the model, so their share only shrinks with real models (seconds "
            "to minutes a call). The paired and median ratios compare whole calls on a machine whose 2 cores are "
            "shared with other jobs: single calls vary by several per cent, so differences of a few per cent "
            "between them are noise. `load_pipeline` adds model resolution and checks, `pipe.to(device)` and "
            "setting the attention backend, a few milliseconds once per run.", width=104, break_on_hyphens=False),
    ]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.write_docs:
        common.write_section(SECTION, text)
        print(f"wrote {common.DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
