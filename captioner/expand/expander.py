"""Prompt expansion: a short user prompt -> one detailed caption in the style of the training captions.

For each prompt, :meth:`Expander.expand`:

1. returns the cached result when the same prompt was expanded with the same settings before (the key
   covers the prompt, the prompt file's version and text, the model and revision, the sampling
   settings, the examples, the checks and the target tokenizer); the language model is not even
   loaded when every prompt is cached;
2. passes a prompt through unchanged when it is already detailed (``passthrough_words`` or more words),
   unless ``force``; falls back to a prompt as it is, without asking the model, when it talks to the
   model instead of describing a video ("ignore previous instructions...",
   :func:`~captioner.expand.checks.injection_reason`; ``checks.injections``);
3. otherwise builds a conversation: the system prompt, the ``k`` nearest (short prompt, caption)
   examples as earlier turns, and the user's prompt between ``<prompt>`` tags (content, never
   instructions);
4. generates ``candidates`` answers (each with its own seed, so every answer depends only on its
   prompt and seed, not on what else is in the batch), cleans them, and checks them in code
   (:mod:`captioner.expand.checks`) and against the token budget of the target video model's
   tokenizer (:class:`~captioner.expand.budget.TokenBudget`);
5. keeps the passing candidate nearest the prompt (sentence-embedding cosine similarity); when none
   passes, asks again with the reason (``checks.max_retries`` times; the rejected answer goes back as an
   earlier turn, cut to :data:`ECHO_CHARS_PER_TOKEN` characters per token of ``max_new_tokens``, so a
   runaway answer cannot make each retry larger than the last); a caption that passes everything
   but is over the budget on the last try is trimmed at a sentence boundary; when nothing works the
   original prompt is used and the result says why (status ``fallback``).

All prompts of a call are batched: one backend call per round and candidate set (left-padded batches
for ``hf``, concurrent requests for ``openai``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from captioner.backends import ChatBackend, Message, build_backend
from captioner.expand.budget import TokenBudget
from captioner.expand.checks import (
    check_expansion,
    clean_answer,
    injection_reason,
    word_count,
)
from captioner.expand.config import ExpandConfig
from captioner.expand.examples import (
    Example,
    ExampleIndex,
    builtin_examples,
    load_examples,
)
from captioner.expand.results import CACHE_FORMAT, Expansion, ExpansionCache  # noqa: F401 (re-exported: they lived here)
from captioner.prompts import load_prompts
from densecap.errors import ConfigError
from densecap.files import file_sha256

__all__ = ["EXPAND_SCHEMA", "Expander", "Expansion", "ExpansionCache"]

log = logging.getLogger(__name__)

EXPAND_SCHEMA: dict[str, dict[str, set[str]]] = {
    "expand": {
        "system": {"target_words"},
        "user": {"prompt"},
        "retry": {"reason"},
        "too_long": {"tokens", "max_tokens", "target_words"},
    }
}

#: A rejected answer sent back on a retry is cut at this many characters per token of ``max_new_tokens``
#: (an answer the model can have written is rarely longer; the checks' reason says what was wrong).
ECHO_CHARS_PER_TOKEN = 6


_TAG = re.compile(r"</?\s*prompt\s*>", re.IGNORECASE)


def _echo(text: str, max_new_tokens: int) -> str:
    """A rejected answer as it is sent back on a retry: at most ``ECHO_CHARS_PER_TOKEN * max_new_tokens``
    characters (then ``[... N more characters]``)."""
    if not text:
        return "(empty)"
    limit = ECHO_CHARS_PER_TOKEN * max_new_tokens
    return text if len(text) <= limit else f"{text[:limit]} [... {len(text) - limit} more characters]"


def _as_content(prompt: str) -> str:
    """The user's prompt as it goes between the tags: whitespace collapsed, and any ``<prompt>`` tags of its
    own neutralised so that it cannot close the tag and speak outside it."""
    return _TAG.sub(lambda m: m.group(0).replace("<", "(").replace(">", ")"), " ".join(prompt.split()))


class Expander:
    """Expands prompts as an :class:`ExpandConfig` says.

    ``backend``: an already built chat backend (otherwise built from ``cfg.expander`` on first need);
    ``budget``: the target's token budget (otherwise from ``cfg.target.tokenizer``; ``t2v`` resolves
    ``target.family``/``target.model`` into a budget, see :func:`t2v.expansion.load_expander`).
    """

    def __init__(self, cfg: ExpandConfig, *, backend: ChatBackend | None = None, budget: TokenBudget | None = None):
        self.cfg = cfg
        self.prompts = load_prompts(cfg.prompts, EXPAND_SCHEMA)
        self.prompt_version = str(self.prompts["version"])
        self._prompt_file_sha = file_sha256(Path(self.prompts["_path"]))
        self._backend = backend
        self._owns_backend = backend is None
        self.budget = budget if budget is not None else self._budget_from_config()
        if self.budget is None and (cfg.target.family or cfg.target.model):
            raise ConfigError(
                "target.family/target.model name a video model; its tokenizer is resolved by t2v: use "
                "`t2v expand` or t2v.expansion.load_expander, or give target.tokenizer + target.max_tokens"
            )
        self._index: ExampleIndex | None = None
        self._embedder = None
        self.cache = ExpansionCache(cfg.resolved_cache_dir()) if cfg.cache else None

    # ------------------------------------------------------------------ setup

    def _budget_from_config(self) -> TokenBudget | None:
        t = self.cfg.target
        if t.tokenizer:
            from captioner.modelrefs import resolve_model_ref

            return TokenBudget.from_pretrained(resolve_model_ref(t.tokenizer), int(t.max_tokens), revision=t.revision)
        return None

    @property
    def backend(self) -> ChatBackend:
        if self._backend is None:
            self._backend = build_backend(self.cfg.expander)
        return self._backend

    def _examples_source(self) -> list[Example]:
        if self.cfg.examples.pairs:
            path = Path(self.cfg.examples.pairs).expanduser()
            examples = load_examples(path)
            if not examples:
                raise ConfigError(f"examples.pairs {path}: no pairs in the file")
            return examples
        return builtin_examples(self.prompts)

    @property
    def index(self) -> ExampleIndex:
        if self._index is None:
            cache_dir = self.cfg.resolved_cache_dir() if self.cfg.cache else None
            self._index = ExampleIndex(self._examples_source(), self.embedder, cache_dir)
        return self._index

    @property
    def embedder(self):
        if self._embedder is None:
            from captioner.textembed import TextEmbedder

            self._embedder = TextEmbedder(self.cfg.examples.embedder)
        return self._embedder

    def describe(self) -> dict[str, Any]:
        """The settings that decide an expansion (also what the cache key is made of, with the prompt)."""
        cfg = self.cfg
        model = {k: v for k, v in cfg.expander.model_dump(mode="json").items()
                 if k in ("type", "model", "revision", "temperature", "top_p", "seed", "dtype")}
        if cfg.examples.pairs:
            examples = {"pairs": str(cfg.examples.pairs),
                        "sha256": file_sha256(Path(cfg.examples.pairs).expanduser()),
                        "k": cfg.examples.k, "embedder": cfg.examples.embedder.model}
        else:
            examples = {"pairs": None, "k": cfg.examples.k, "embedder": cfg.examples.embedder.model}
        return {
            "prompts": self.prompt_version,
            "prompt_file_sha256": self._prompt_file_sha,
            "model": model,
            "sampling": {"seed": cfg.seed, "candidates": cfg.candidates, "max_new_tokens": cfg.max_new_tokens,
                         "target_words": cfg.target_words},
            "passthrough_words": None if cfg.force else cfg.passthrough_words,
            "examples": examples,
            "checks": cfg.checks.model_dump(mode="json"),
            "target": self.budget.describe() if self.budget else None,
        }

    def cache_key(self, prompt: str, settings: dict[str, Any] | None = None) -> str:
        payload = json.dumps({"prompt": " ".join(prompt.split()), **(settings or self.describe())},
                             sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    # ------------------------------------------------------------------ expansion

    def expand_one(self, prompt: str) -> Expansion:
        return self.expand([prompt])[0]

    def expand(self, prompts: list[str], *, progress=None) -> list[Expansion]:
        """Expand each prompt (see the module docstring); results in input order.

        Prompts that need the model go in chunks of ``chunk_size``, each chunk's results cached as soon as
        it is done, so an interrupted long list loses at most one chunk; a prompt given twice is expanded
        once. ``progress(done, total)`` is called after each chunk."""
        prompts = [str(p) for p in prompts]
        for i, p in enumerate(prompts):
            if not p.strip():
                raise ValueError(f"prompt {i + 1} is empty")
        settings = self.describe()
        model_info = settings["model"]
        results: list[Expansion | None] = [None] * len(prompts)
        keys = [self.cache_key(p, settings) for p in prompts]
        pending: dict[str, list[int]] = {}  # key -> positions of that prompt, first-seen order
        for i, (p, key) in enumerate(zip(prompts, keys)):
            if key in pending:
                pending[key].append(i)
                continue
            hit = self.cache.get(key) if self.cache else None
            if hit is not None:
                hit.cached = True
                results[i] = hit
                continue
            limit = self.cfg.passthrough_words
            if not self.cfg.force and limit is not None and word_count(p) >= limit:
                results[i] = self._passthrough(p, key, model_info)
                if self.cache:
                    self.cache.put(key, results[i])
                continue
            injection = injection_reason(p) if self.cfg.checks.injections else None
            if injection:
                results[i] = self._injection(p, key, model_info, injection)
                continue
            pending[key] = [i]
        order = list(pending)
        for start in range(0, len(order), self.cfg.chunk_size):
            part = order[start : start + self.cfg.chunk_size]
            t0 = time.perf_counter()
            made = self._expand_with_model([prompts[pending[k][0]] for k in part], model_info)
            per = (time.perf_counter() - t0) / len(part)
            for key, exp in zip(part, made):
                exp.key, exp.seconds = key, round(per, 4)
                if self.cache:
                    self.cache.put(key, exp)
                for i in pending[key]:
                    results[i] = exp
            if progress is not None:
                progress(start + len(part), len(order))
        return results  # type: ignore[return-value]

    def _base(self, prompt: str, text: str, status: str, model_info: dict) -> Expansion:
        return Expansion(prompt=prompt, text=text, status=status, prompt_version=self.prompt_version,
                         model=model_info, seed=self.cfg.seed,
                         max_tokens=self.budget.max_tokens if self.budget else None,
                         tokenizer=self.budget.name if self.budget else None)

    def _passthrough(self, prompt: str, key: str, model_info: dict) -> Expansion:
        text = " ".join(prompt.split())
        exp = self._base(prompt, text, "passthrough", model_info)
        exp.reason = f"already detailed ({word_count(prompt)} words >= passthrough_words {self.cfg.passthrough_words})"
        exp.key = key
        if self.budget:
            exp.tokens = self.budget.count(text)
            if exp.tokens > self.budget.max_tokens:
                trimmed = self.budget.trim(text)
                if trimmed:
                    exp.text, exp.trimmed = trimmed, True
                    exp.reason += f"; trimmed at a sentence boundary to fit {self.budget.max_tokens} tokens"
                    exp.tokens = self.budget.count(trimmed)
                else:
                    exp.reason += (f"; its first sentence alone is over {self.budget.max_tokens} tokens, so the "
                                   "video model's text encoder will cut it")
        return exp

    def _injection(self, prompt: str, key: str, model_info: dict, reason: str) -> Expansion:
        text = " ".join(prompt.split())
        exp = self._base(prompt, text, "fallback", model_info)
        exp.reason = f"{reason}; the original prompt is used"
        exp.key = key
        exp.tokens = self.budget.count(text) if self.budget else None
        log.info("prompt %r: %s", prompt[:60], exp.reason)
        return exp

    def conversation(self, prompt: str, examples: list[Example]) -> list[Message]:
        """The messages sent for ``prompt``: system, then the examples (nearest last), then the prompt."""
        p = self.prompts["expand"]
        conv = [Message.system(p["system"].format(target_words=self.cfg.target_words))]
        for ex in reversed(examples):
            conv.append(Message.user(p["user"].format(prompt=_as_content(ex.prompt))))
            conv.append(Message.assistant(ex.caption))
        conv.append(Message.user(p["user"].format(prompt=_as_content(prompt))))
        return conv

    def _check(self, prompt: str, text: str, examples: list[Example] = ()) -> str | None:
        c = self.cfg.checks
        return check_expansion(
            prompt, text, language=c.language, min_words=c.min_words, max_words=c.max_words,
            keep_quotes=c.keep_quotes, keep_named_terms=c.keep_named_terms, min_coverage=c.min_coverage,
            check_excluded=c.exclusions,
            instructions=self.prompts["expand"]["system"].format(target_words=self.cfg.target_words),
            examples=[e.caption for e in examples],
        )

    def _similarities(self, prompt: str, texts: list[str]) -> list[float]:
        vecs = self.embedder.encode([prompt, *texts])
        return [round(float(v), 4) for v in (vecs[1:] @ vecs[0])]

    def _expand_with_model(self, prompts: list[str], model_info: dict) -> list[Expansion]:
        cfg = self.cfg
        k = cfg.examples.k
        examples = self.index.nearest(prompts, k) if k > 0 else [[] for _ in prompts]
        convs = [self.conversation(p, ex) for p, ex in zip(prompts, examples)]
        out = [self._base(p, p, "fallback", model_info) for p in prompts]
        for exp, ex in zip(out, examples):
            exp.examples = [e.id for e in ex]
        last_reason: list[str | None] = [None] * len(prompts)
        over_budget: list[str | None] = [None] * len(prompts)  # best passing-but-too-long text
        active = list(range(len(prompts)))
        n = cfg.candidates
        sampling = cfg.expander.temperature > 0
        backend = self.backend
        model_info.update({k2: v for k2, v in backend.describe().items() if k2 in ("commit",) and v})
        rounds = cfg.checks.max_retries + 1
        for attempt in range(rounds):
            if not active:
                break
            batch = [convs[i] for i in active for _ in range(n)]
            seeds = [cfg.seed + 1000 * attempt + j for _ in active for j in range(n)] if sampling else None
            answers = backend.generate(batch, max_new_tokens=cfg.max_new_tokens, seeds=seeds)
            still: list[int] = []
            for pos, i in enumerate(active):
                exp = out[i]
                exp.attempts = attempt + 1
                mine = slice(pos * n, (pos + 1) * n)
                verdicts = self._verdicts(prompts[i], answers[mine], examples[i], attempt, seeds[mine] if seeds else None)
                exp.candidates.extend(verdicts)
                if self._take_best(exp, verdicts):
                    continue
                v, follow = self._follow_up(verdicts)
                if v["over_budget"]:
                    over_budget[i] = v["text"]
                last_reason[i] = v["reason"]
                convs[i] = [*convs[i], Message.assistant(_echo(v["text"], cfg.max_new_tokens)), Message.user(follow)]
                still.append(i)
            active = still
        for i in active:  # nothing passed within the retry budget
            self._give_up(out[i], prompts[i], examples[i], over_budget[i], last_reason[i])
        return out

    def _verdicts(
        self, prompt: str, answers: list[str], examples: list[Example], attempt: int, seeds: list[int] | None
    ) -> list[dict[str, Any]]:
        """Each answer cleaned and judged: ``reason`` is the checks' reason, or the token budget's, or None
        (it passes); with several candidates, each one's similarity to the prompt when one passes."""
        verdicts = []
        for j, answer in enumerate(answers):
            text = clean_answer(answer)
            reason = self._check(prompt, text, examples)
            tokens = self.budget.count(text) if self.budget and text else None
            over = reason is None and tokens is not None and tokens > self.budget.max_tokens
            verdicts.append({"text": text, "attempt": attempt + 1, "seed": seeds[j] if seeds else None,
                             "reason": reason or (f"{tokens} tokens, over the limit of {self.budget.max_tokens}"
                                                  if over else None),
                             "tokens": tokens, "over_budget": over})
        if self.cfg.candidates > 1 and any(v["reason"] is None for v in verdicts):
            sims = self._similarities(prompt, [v["text"] for v in verdicts])
            for v, s in zip(verdicts, sims):
                v["similarity"] = s
        return verdicts

    @staticmethod
    def _take_best(exp: Expansion, verdicts: list[dict[str, Any]]) -> bool:
        """Take the passing candidate nearest the prompt into ``exp``; False when none passes."""
        passing = [v for v in verdicts if v["reason"] is None]
        if not passing:
            return False
        best = max(passing, key=lambda v: v.get("similarity", 0.0))
        exp.text, exp.status, exp.tokens = best["text"], "expanded", best["tokens"]
        exp.similarity = best.get("similarity")
        exp.reason = None
        return True

    def _follow_up(self, verdicts: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
        """The rejected candidate that goes back to the model, and what to ask next: a shorter caption (for
        the shortest one over the token budget), else another try with the first one's reason."""
        p = self.prompts["expand"]
        too_long = [v for v in verdicts if v["over_budget"]]
        if not too_long:
            v = verdicts[0]
            return v, p["retry"].format(reason=v["reason"])
        v = min(too_long, key=lambda v: v["tokens"])
        words = max(10, int(word_count(v["text"]) * self.budget.max_tokens / v["tokens"] * 0.85))
        return v, p["too_long"].format(tokens=v["tokens"], max_tokens=self.budget.max_tokens, target_words=words)

    def _give_up(
        self, exp: Expansion, prompt: str, examples: list[Example], over_budget: str | None, last_reason: str | None
    ) -> None:
        """After the last try: the caption that was only over the budget, trimmed at a sentence boundary
        when it still passes the checks; else the original prompt (status ``fallback``)."""
        if over_budget is not None:
            trimmed = self.budget.trim(over_budget)
            if trimmed and self._check(prompt, trimmed, examples) is None:
                exp.text, exp.status, exp.trimmed = trimmed, "expanded", True
                exp.tokens = self.budget.count(trimmed)
                exp.reason = f"trimmed at a sentence boundary to fit {self.budget.max_tokens} tokens"
                return
        exp.text, exp.status = " ".join(prompt.split()), "fallback"
        exp.reason = f"no acceptable expansion after {exp.attempts} tries (last: {last_reason}); the original prompt is used"
        exp.tokens = self.budget.count(exp.text) if self.budget else None
        log.info("prompt %r: %s", prompt[:60], exp.reason)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self._backend is not None and self._owns_backend:
            self._backend.close()
        self._backend = None

    def __enter__(self) -> Expander:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
