"""Fine-tune a small instruct model as the prompt expander, on (short prompt, dense caption) pairs.

    captioner train-expander PAIRS --out DIR [--config tiny|default|PATH] [--set K=V] [--resume latest]

The few-shot expander (:class:`~captioner.expand.Expander` with ``examples.k > 0``) imitates the style
of the training captions from a handful of examples per prompt; a model fine-tuned on the pairs that
``captioner pairs`` mined from the same captions writes in that style with no examples at all (shorter
prompts, faster expansion), as ShareGPT4Video's authors did for their re-captioner.

Each pair becomes the conversation the expander sends at inference (built by
:meth:`Expander.conversation` itself with no examples: the system prompt of the ``prompts`` file filled
with ``target_words``, then the short prompt between ``<prompt>`` tags) followed by the caption as the
assistant's reply. It is tokenised with the model's chat template; the labels are ``-100`` everywhere
except on the reply and its end-of-turn token, so the loss (mean over those tokens) teaches the reply
only. Examples longer than ``max_length`` tokens are dropped (and counted). A share of the pairs
(``eval_fraction``, chosen by a hash of the seed and the pair id, so adding pairs keeps the held-out
ones held out) is held out; its loss is reported at the end of every epoch and of training.

Training: a LoRA adapter (peft, ``lora``) or every weight (``full: true``), AdamW, a warm-up then a
cosine (or linear) decay, gradient clipping, ``gradient_accumulation_steps`` micro-batches per step
(right-padded). The data order of each epoch is a permutation drawn from ``seed`` and the epoch, and the
adapter's initialisation comes from ``seed``, so a run is reproducible.

Output folder ``OUT``::

    adapter/             the LoRA adapter (peft format; not written with full: true)
    model/               the adapter merged into the base model + the tokenizer: an ordinary
                         transformers model that the ``hf`` backend loads with ``model: OUT/model``
    expand.yaml          a ready expansion config using OUT/model, without examples (k: 0)
    train_config.yaml    the resolved training config      metrics.jsonl   step, loss, lr, eval_loss
    README.md            model card: base model, data file + sha256, pairs used/dropped, settings, losses
    checkpoints/step-N/  resumable state (see below)

Every ``save_every`` steps, and at the last step, a checkpoint is written into
``checkpoints/.tmp-step-N`` and renamed to ``step-N`` when complete: the trainable weights (peft
adapter folder, or ``trainable.safetensors`` for full fine-tuning), the optimizer and LR-scheduler
states (``torch.save``; read back with ``torch.load(weights_only=True)``), the RNG states
(safetensors) and ``state.json`` (step, position in the epoch, the config, the data file's sha256).
``--resume latest`` restores all of it, so the losses after a resume equal those of an uninterrupted
run; a checkpoint made with other training settings (or other data) is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from densecap.checkpoints import pick_checkpoint
from densecap.config import StrictModel, flatten_dict
from densecap.errors import CaptionerError, ConfigError
from densecap.files import file_sha256, replace_dir
from densecap.files import write_json_atomic as write_text_atomic  # it writes any text

log = logging.getLogger(__name__)

__all__ = [
    "IGNORED_ON_RESUME",
    "EncodedExample",
    "ExpanderTrainingError",
    "LoraSettings",
    "TrainExpanderConfig",
    "TrainExpanderResult",
    "collate",
    "encode_conversation",
    "find_checkpoint",
    "load_training_pairs",
    "split_pairs",
    "train_expander",
    "training_messages",
]

CHECKPOINT_FORMAT = 1
CKPT_RE = re.compile(r"^step-(\d+)$")
IGNORE_INDEX = -100

#: Config keys that may change between a checkpoint and its resume (they do not change the losses).
IGNORED_ON_RESUME = frozenset({"save_every", "device", "gradient_checkpointing"})


class ExpanderTrainingError(CaptionerError):
    """Training the expander cannot go on (bad data, a template that cannot be masked, a refused resume)."""


# ---------------------------------------------------------------------------------------- config


class LoraSettings(StrictModel):
    """The LoRA adapter (peft ``LoraConfig``)."""

    rank: int = Field(16, ge=1, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0.0, description="lora_alpha (the update is scaled by alpha / rank)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' (every linear layer but the output head) or module names"
    )


class TrainExpanderConfig(StrictModel):
    """Config of ``captioner train-expander`` (configs/train-expander/*.yaml)."""

    base_model: str = Field("Qwen/Qwen2.5-1.5B-Instruct", min_length=1,
                            description="instruct model: hub id, local folder or tiny://llm")
    revision: str | None = None
    prompts: str = Field("expand-v1", description="the expansion prompt file the conversations are built with")
    target_words: int = Field(100, ge=10, le=1000, description="fills the system prompt, as at inference")
    full: bool = Field(False, description="train every weight instead of a LoRA adapter (far more memory)")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    lr: float = Field(2e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="share of the steps spent warming up")
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, ge=1, description="examples per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8, description="tokens; longer examples are dropped (and counted)")
    max_grad_norm: float = Field(1.0, gt=0.0)
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 on a GPU that supports it, else float32")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, ~30% slower")
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of the pairs held out for eval_loss")
    save_every: int | None = Field(200, ge=1, description="checkpoint every N steps (and at the last step)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N (got {v!r})")
        return v


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class TrainingPair:
    id: str
    prompt: str
    caption: str


_PAIRS_HINT = "pass the pairs .jsonl written by `captioner pairs` (or its --sft chat export)"
_PROMPT_TAGS = re.compile(r"^\s*<prompt>(.*)</prompt>\s*$", re.DOTALL | re.IGNORECASE)


def _first_object(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    return json.loads(line)
    except FileNotFoundError:
        raise ExpanderTrainingError(f"{path}: pairs file not found") from None
    except IsADirectoryError:
        raise ExpanderTrainingError(f"{path}: is a folder; {_PAIRS_HINT}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExpanderTrainingError(f"{path}:1: not a JSON line; {_PAIRS_HINT}") from None
    return None


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _load_chat_rows(path: Path) -> list[TrainingPair]:
    """``{"messages": [{"role", "content"}, ...]}`` or ``{"conversations": [{"from", "value"}, ...]}``
    rows (``captioner pairs --sft``): the last user turn is the short prompt, the last assistant turn
    the caption; the row's own system turn is replaced by the expansion prompt's."""
    roles = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
    out: list[TrainingPair] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ExpanderTrainingError(f"{where}: not valid JSON ({exc.msg})") from None
            turns = obj.get("messages", obj.get("conversations")) if isinstance(obj, dict) else None
            if not isinstance(turns, list):
                raise ExpanderTrainingError(f"{where}: expected a 'messages' list like the lines before; {_PAIRS_HINT}")
            prompt = caption = None
            for t in turns:
                if not isinstance(t, dict):
                    raise ExpanderTrainingError(f"{where}: every turn must be an object")
                role = roles.get(str(t.get("role", t.get("from"))))
                text = _text_of(t.get("content", t.get("value")))
                if role == "user" and text:
                    prompt = text
                elif role == "assistant" and text:
                    caption = text
            if not prompt or not caption or not prompt.strip() or not caption.strip():
                raise ExpanderTrainingError(f"{where}: needs a non-empty user turn (short prompt) and assistant "
                                            "turn (caption)")
            m = _PROMPT_TAGS.match(prompt)
            prompt = (m.group(1) if m else prompt).strip()
            caption = caption.strip()
            pid = hashlib.sha256(f"{prompt}\0{caption}".encode()).hexdigest()[:20]
            out.append(TrainingPair(pid, prompt, caption))
    return out


def load_training_pairs(path: str | Path) -> list[TrainingPair]:
    """The (short prompt, caption) pairs of a ``captioner pairs`` file (read with
    :func:`captioner.pairs.load_pairs`) or of its chat/ShareGPT SFT export. Errors name the file."""
    from captioner.pairs import load_pairs

    path = Path(path)
    first = _first_object(path)
    if first is None:
        raise ExpanderTrainingError(f"{path}: no pairs in the file")
    if isinstance(first, dict) and ("messages" in first or "conversations" in first) and "caption" not in first:
        pairs = _load_chat_rows(path)
    else:
        try:
            pairs = [TrainingPair(p.id, p.prompt, p.caption) for p in load_pairs(path)]
        except ExpanderTrainingError:
            raise
        except CaptionerError as exc:
            raise ExpanderTrainingError(f"{exc}; {_PAIRS_HINT}") from None
    if not pairs:
        raise ExpanderTrainingError(f"{path}: no pairs in the file")
    return pairs


def split_pairs(pairs: Sequence[TrainingPair], fraction: float, seed: int) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """(train, held out): ``round(fraction * n)`` pairs (at least one when ``fraction > 0``, never all)
    ranked by a hash of the seed and the pair id, each part in file order."""
    n = len(pairs)
    if fraction <= 0 or n < 2:
        return list(pairs), []
    n_eval = min(n - 1, max(1, round(fraction * n)))
    ranked = sorted(range(n), key=lambda i: (hashlib.sha256(f"{seed}\0{pairs[i].id}".encode()).hexdigest(), i))
    held = set(ranked[:n_eval])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def training_messages(expander, prompt: str, caption: str) -> list[dict[str, str]]:
    """The conversation for one pair: exactly what ``expander`` sends for ``prompt`` with no examples
    (:meth:`~captioner.expand.Expander.conversation`), then ``caption`` as the assistant's reply."""
    conv = expander.conversation(prompt, [])
    return [{"role": m.role, "content": m.text} for m in conv] + [{"role": "assistant", "content": caption}]


def _render(tokenizer, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    # the hf backend tokenises the rendered prompt the same way at inference
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_conversation(tokenizer, messages: list[dict[str, str]], *, end_ids: set[int] | frozenset[int] = frozenset(),
                        name: str = "the model") -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a conversation whose last message is the assistant's reply.

    The labels are ``-100`` on the prompt (the conversation up to the reply, rendered with
    ``add_generation_prompt=True``) and on anything the template writes after the reply's last
    end-of-turn token (``end_ids``, e.g. the newline after ``<|im_end|>``)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's reply")
    prefix = _render(tokenizer, messages[:-1], generation_prompt=True)
    full = _render(tokenizer, messages, generation_prompt=False)
    if len(full) <= len(prefix) or full[: len(prefix)] != prefix:
        at = next((i for i, (a, b) in enumerate(zip(prefix, full)) if a != b), min(len(prefix), len(full)))
        raise ExpanderTrainingError(
            f"{name}: the chat template's prompt (add_generation_prompt=True, {len(prefix)} tokens) is not a prefix "
            f"of the tokenised conversation with the reply ({len(full)} tokens; they differ at token {at}), so the "
            "reply's tokens cannot be told apart for the loss; use a model whose template renders the "
            "assistant turn after its generation prompt"
        )
    reply = full[len(prefix):]
    ends = [i for i, t in enumerate(reply) if t in end_ids]
    keep = ends[-1] + 1 if ends else len(reply)
    labels = [IGNORE_INDEX] * len(prefix) + reply[:keep] + [IGNORE_INDEX] * (len(reply) - keep)
    return full, labels


@dataclass
class EncodedExample:
    id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids (``pad_id``), attention_mask, labels (``-100``)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _end_ids(tokenizer, model_config_eos: Any = None) -> set[int]:
    ids: set[int] = set()
    for v in (tokenizer.eos_token_id, model_config_eos):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


# ------------------------------------------------------------------------------------ checkpoints


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_checkpoint(out_dir: str | Path, resume: str) -> Path | None:
    """``latest``: the newest complete checkpoint under ``OUT/checkpoints`` (None when there is none);
    otherwise ``resume`` is a checkpoint folder."""
    if resume == "latest":  # the newest that can be read: a damaged one is passed over with a warning
        try:
            return pick_checkpoint([p for _, p in list_checkpoints(out_dir)])
        except CaptionerError as exc:
            raise ExpanderTrainingError(str(exc)) from None
    p = Path(resume).expanduser()
    if (p / "state.json").is_file():
        return p
    raise ExpanderTrainingError(f"--resume {resume}: not a checkpoint folder (no state.json); use 'latest' or "
                                "OUT/checkpoints/step-N")


def _config_diffs(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    a, b = flatten_dict(then), flatten_dict(now)
    keys = sorted((set(a) | set(b)) - IGNORED_ON_RESUME)
    return [f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in keys if a.get(k) != b.get(k)]


# --------------------------------------------------------------------------------------- training


@dataclass
class TrainExpanderResult:
    out: Path
    model_dir: Path | None
    adapter_dir: Path | None
    expand_config: Path | None
    step: int
    total_steps: int
    train_pairs: int
    eval_pairs: int
    dropped: int
    final_loss: float | None
    eval_loss: float | None
    interrupted: bool = False
    resumed_from: Path | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


class _Metrics:
    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
        return rows

    def truncate(self, step: int) -> None:
        """Keep the lines of steps up to ``step`` (those after a checkpoint are redone on resume)."""
        rows = [r for r in self.read() if int(r.get("step", 0)) <= step]
        if rows or self.path.exists():
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def _resolve_device_dtype(cfg: TrainExpanderConfig):
    import torch

    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device: {cfg.device}, but no CUDA GPU is available (use device: cpu or auto)")
    if cfg.dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
    else:
        dtype = getattr(torch, cfg.dtype)
    return device, dtype


def _epoch_groups(n: int, cfg: TrainExpanderConfig, epoch: int) -> list[list[list[int]]]:
    """The optimizer steps of an epoch: each a list of micro-batches (lists of example indices)."""
    import torch

    g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + epoch) % (2**63))
    order = torch.randperm(n, generator=g).tolist()
    batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    k = cfg.gradient_accumulation_steps
    return [batches[i : i + k] for i in range(0, len(batches), k)]


def _loss_sum(model, batch: dict[str, Any], device) -> tuple[Any, int]:
    """Summed cross-entropy over the reply tokens of a batch, and their number."""
    import torch.nn.functional as F

    ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    out = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device), use_cache=False)
    logits, targets = out.logits[:, :-1], labels[:, 1:]
    keep = targets != IGNORE_INDEX
    loss = F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
    return loss, int(keep.sum())


def _evaluate(model, examples: list[EncodedExample], cfg: TrainExpanderConfig, pad_id: int, device) -> float | None:
    import torch

    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        for i in range(0, len(examples), cfg.batch_size):
            s, n = _loss_sum(model, collate(examples[i : i + cfg.batch_size], pad_id), device)
            total += float(s)
            count += n
    if was_training:
        model.train()
    return total / max(count, 1)


def _rng_tensors(device) -> dict[str, Any]:
    import torch

    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def _restore_rng(tensors: dict[str, Any], device) -> None:
    import torch

    torch.set_rng_state(tensors["torch_cpu"])
    if device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)


def _trainable(model) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(out: Path, model, optimizer, scheduler, cfg: TrainExpanderConfig, state: dict[str, Any],
                     device) -> Path:
    import torch
    from safetensors.torch import save_file

    step = state["step"]
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if cfg.full:
        save_file({n: p.detach().to("cpu").contiguous() for n, p in _trainable(model).items()},
                  str(tmp / "trainable.safetensors"))
    else:
        model.save_pretrained(str(tmp / "adapter"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    save_file({k: v.contiguous() for k, v in _rng_tensors(device).items()}, str(tmp / "rng.safetensors"))
    write_text_atomic(tmp / "state.json", json.dumps(
        {"format": CHECKPOINT_FORMAT, **state, "config": cfg.model_dump(mode="json"), "saved_at": time.time()},
        indent=2) + "\n")
    replace_dir(tmp, final)
    log.info("saved checkpoint %s", final)
    return final


def _load_checkpoint(path: Path, model, optimizer, scheduler, cfg: TrainExpanderConfig, device) -> None:
    import torch
    from safetensors.torch import load_file

    if cfg.full:
        sd = load_file(str(path / "trainable.safetensors"))
        params = _trainable(model)
        if set(sd) != set(params):
            raise ExpanderTrainingError(f"{path}: the saved weights do not fit the model "
                                        f"(missing {sorted(set(params) - set(sd))[:3]}, "
                                        f"unexpected {sorted(set(sd) - set(params))[:3]})")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(sd[n].to(device=p.device, dtype=p.dtype))
    else:
        from peft import set_peft_model_state_dict

        weights = path / "adapter" / "adapter_model.safetensors"
        if not weights.is_file():
            raise ExpanderTrainingError(f"{path}: no adapter/adapter_model.safetensors in the checkpoint")
        result = set_peft_model_state_dict(model, load_file(str(weights)))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise ExpanderTrainingError(f"{path}: the saved adapter does not fit the model (missing {missing[:3]}, "
                                        f"unexpected {list(result.unexpected_keys)[:3]})")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    _restore_rng(load_file(str(path / "rng.safetensors")), device)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExpanderTrainingError(f"{path}: unreadable checkpoint state ({exc})") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ExpanderTrainingError(f"{path}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return state


def _check_resume(path: Path, state: dict[str, Any], cfg: TrainExpanderConfig, data_sha: str, dtype_name: str) -> None:
    diffs = _config_diffs(state.get("config", {}), cfg.model_dump(mode="json"))
    if not any(d.startswith("dtype:") for d in diffs) and state.get("dtype") not in (None, dtype_name):
        diffs.append(f"dtype (resolved from auto): {state.get('dtype')!r} then, {dtype_name!r} now")
    then_sha = (state.get("data") or {}).get("sha256")
    if then_sha != data_sha:
        diffs.append(f"data (pairs file sha256): {str(then_sha)[:12]}… then, {data_sha[:12]}… now")
    if diffs:
        keys = ", ".join(d.split(":", 1)[0] for d in diffs)
        raise ExpanderTrainingError(
            f"{path}: cannot resume: the checkpoint was trained with other settings ({keys}): " + "; ".join(diffs)
            + "; train into another --out, or put the settings back"
        )


def _prompt_ref(prompts: str) -> str:
    """A built-in prompt name as it is; a file as an absolute path (expand.yaml may live elsewhere)."""
    from captioner.prompts import BUILTIN_DIR, resolve_prompt_file

    path = resolve_prompt_file(prompts).resolve()
    return prompts if path.parent == BUILTIN_DIR.resolve() else str(path)


def _expand_yaml(cfg: TrainExpanderConfig, model_dir: Path, dtype_name: str, pairs_path: Path, path: Path) -> str:
    doc = {
        "expander": {"type": "hf", "model": str(model_dir.resolve()), "dtype": "auto", "device": "auto",
                     "batch_size": 8, "temperature": 0.0},
        "prompts": _prompt_ref(cfg.prompts),
        "max_new_tokens": 400,
        "target_words": cfg.target_words,
        "examples": {"k": 0},
    }
    head = (
        f"# Prompt expansion with the expander fine-tuned by `captioner train-expander` on {pairs_path}\n"
        f"# (base {cfg.base_model}, trained in {dtype_name}). It was trained without few-shot examples, with\n"
        f"# the '{cfg.prompts}' prompts and target_words {cfg.target_words}: keep these as they are.\n"
        f"#   t2v expand \"a red fox jumps into the snow\" --config {path.resolve()} --family wan\n"
        "# Set `target:` to bound the length by the video model's text encoder, e.g.\n"
        "#   target: {family: wan, model: Wan-AI/Wan2.1-T2V-1.3B-Diffusers}\n"
        "# (`t2v expand --family/--model` and `t2v generate --expand` fill it in from the video model).\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _readme(cfg: TrainExpanderConfig, result: TrainExpanderResult, pairs_path: Path, data_sha: str,
            n_pairs: int, dtype_name: str, device: str, max_len_seen: int) -> str:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    settings = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).strip()
    what = "every weight (full fine-tuning)" if cfg.full else (
        f"a LoRA adapter (rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}, target {cfg.lora.target_modules})")
    return f"""# Prompt expander fine-tuned from {cfg.base_model}

Rewrites a short text-to-video prompt as a dense caption in the style of the captions of
`{pairs_path.name}`, without few-shot examples. Trained by `captioner train-expander`: {what}.

- base model: `{cfg.base_model}`{f" (revision {cfg.revision})" if cfg.revision else ""}
- data: `{pairs_path.resolve()}` (sha256 `{data_sha}`), {n_pairs} pairs: {result.train_pairs} trained on,
  {result.eval_pairs} held out, {result.dropped} dropped as longer than max_length {cfg.max_length} tokens
  (longest kept: {max_len_seen} tokens)
- conversations: the `{cfg.prompts}` prompt file's system prompt (target_words {cfg.target_words}) and user
  template, exactly as the expander sends them; loss on the caption and its end-of-turn token only
- {result.step} optimizer steps of {cfg.batch_size} x {cfg.gradient_accumulation_steps} examples, lr {cfg.lr:g}
  ({cfg.scheduler}, warm-up {cfg.warmup_ratio:g}), {dtype_name} on {device}, seed {cfg.seed}
- final train loss (mean of the last epoch's worth of steps): {fmt(result.final_loss)}; held-out loss: {fmt(result.eval_loss)}

## Use

    t2v expand "a red fox jumps into the snow" --config {result.out / "expand.yaml"} --family wan

`model/` is an ordinary transformers model (the adapter merged into the base weights) with its
tokenizer: any config can use it as `expander: {{type: hf, model: {result.out / "model"}}}`.
{"" if cfg.full else "`adapter/` is the peft adapter alone (`PeftModel.from_pretrained(base, adapter)`)."}
Keep `examples.k: 0`, the same prompts file and target_words.

## Settings

```yaml
{settings}
```

Per-step losses: `metrics.jsonl`.
"""


def train_expander(
    pairs_path: str | Path,
    out_dir: str | Path,
    cfg: TrainExpanderConfig,
    *,
    resume: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainExpanderResult:
    """Fine-tune ``cfg.base_model`` on the pairs of ``pairs_path``; writes ``out_dir`` (see the module doc).

    ``resume``: ``latest`` or a checkpoint folder. ``stop_after``: stop (as if interrupted) once this many
    optimizer steps are done, after checkpointing; ``--resume latest`` continues (for time-boxed jobs)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    from captioner.backends import HFBackendConfig
    from captioner.expand.config import ExpandConfig
    from captioner.expand.expander import Expander
    from captioner.modelrefs import resolve_model_ref

    t_start = time.perf_counter()
    pairs_path, out = Path(pairs_path), Path(out_dir)
    metrics = _Metrics(out / "metrics.jsonl")
    if resume is None and (list_checkpoints(out) or metrics.path.exists()):
        raise ExpanderTrainingError(f"{out} already holds a training run; continue it with --resume latest, or "
                                    "choose another --out")

    pairs = load_training_pairs(pairs_path)
    data_sha = file_sha256(pairs_path)
    device, dtype = _resolve_device_dtype(cfg)
    dtype_name = str(dtype).removeprefix("torch.")
    ckpt = find_checkpoint(out, resume) if resume else None
    state: dict[str, Any] | None = None
    if ckpt is not None:
        state = _read_state(ckpt)
        _check_resume(ckpt, state, cfg, data_sha, dtype_name)
    elif resume:
        log.info("no checkpoint in %s; starting from step 0", out / "checkpoints")
    model_path = resolve_model_ref(cfg.base_model)
    where = cfg.base_model + (f"@{cfg.revision}" if cfg.revision else "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg.revision)
    except Exception as exc:  # OSError, hub errors...
        raise ExpanderTrainingError(f"base_model {where}: cannot load its tokenizer: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ExpanderTrainingError(f"base_model {where} has no chat template (is it an instruct/chat model?)")

    # The conversations come from the expander's own builder (same prompt file and target_words).
    expander = Expander(ExpandConfig(expander=HFBackendConfig(model=cfg.base_model), prompts=cfg.prompts,
                                     target_words=cfg.target_words, cache=False))
    try:
        from transformers import GenerationConfig

        gen_eos = GenerationConfig.from_pretrained(model_path, revision=cfg.revision).eos_token_id
    except Exception:  # noqa: BLE001 - no generation_config.json
        gen_eos = None
    end_ids = _end_ids(tokenizer, gen_eos)

    train_pairs, eval_pairs = split_pairs(pairs, cfg.eval_fraction, cfg.seed)

    def encode(part: list[TrainingPair]) -> tuple[list[EncodedExample], int, int]:
        kept, dropped, longest = [], 0, 0
        for p in part:
            ids, labels = encode_conversation(tokenizer, training_messages(expander, p.prompt, p.caption),
                                              end_ids=end_ids, name=where)
            if len(ids) > cfg.max_length:
                dropped += 1
                continue
            longest = max(longest, len(ids))
            kept.append(EncodedExample(p.id, ids, labels))
        return kept, dropped, longest

    train_set, dropped_train, longest_train = encode(train_pairs)
    eval_set, dropped_eval, longest_eval = encode(eval_pairs)
    dropped = dropped_train + dropped_eval
    notes: list[str] = []
    if dropped:
        msg = (f"dropped {dropped} of {len(pairs)} pairs whose conversation is longer than max_length "
               f"{cfg.max_length} tokens ({dropped_train} for training, {dropped_eval} held out)")
        log.warning(msg)
        notes.append(msg)
    if not train_set:
        raise ExpanderTrainingError(f"{pairs_path}: no pair left to train on (every training conversation is over "
                                    f"max_length {cfg.max_length} tokens; raise max_length)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(end_ids) if end_ids else 0)

    groups_per_epoch = len(_epoch_groups(len(train_set), cfg, 0))
    total = cfg.max_steps or cfg.epochs * groups_per_epoch
    warmup = math.ceil(cfg.warmup_ratio * total)

    # --- model
    torch.manual_seed(cfg.seed)  # the adapter's initialisation
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, revision=cfg.revision, dtype=dtype)
    except Exception as exc:
        raise ExpanderTrainingError(f"base_model {where}: cannot load it as a causal LM: {type(exc).__name__}: {exc}") from exc
    model.to(device)
    if cfg.full:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM", bias="none")
        try:
            with warnings.catch_warnings():  # peft probes a deprecated transformers attribute
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                model = get_peft_model(model, lcfg)
        except ValueError as exc:
            raise ConfigError(f"lora.target_modules {cfg.lora.target_modules!r}: {exc}") from exc
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = list(_trainable(model).values())
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)

    step, epoch, pos = 0, 0, 0
    if ckpt is not None and state is not None:
        _load_checkpoint(ckpt, model, optimizer, scheduler, cfg, device)
        step, epoch, pos = int(state["step"]), int(state["epoch"]), int(state["step_in_epoch"])
        log.info("resumed from %s (step %d of %d)", ckpt, step, total)
    out.mkdir(parents=True, exist_ok=True)
    metrics.truncate(step)
    write_text_atomic(out / "train_config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    log.info("%d training pairs, %d held out, %d dropped; %d steps (%d per epoch); %s trainable parameters "
             "on %s in %s", len(train_set), len(eval_set), dropped, total, groups_per_epoch, f"{n_trainable:,}",
             device, dtype_name)

    def checkpoint_state() -> dict[str, Any]:
        return {"step": step, "epoch": epoch, "step_in_epoch": pos, "total_steps": total, "dtype": dtype_name,
                "data": {"path": str(pairs_path.resolve()), "sha256": data_sha}}

    interrupted = False
    bar = tqdm(total=total, initial=step, desc="train-expander", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        while step < total and not interrupted:
            groups = _epoch_groups(len(train_set), cfg, epoch)
            while pos < len(groups) and step < total:
                group = groups[pos]
                micro = [[train_set[i] for i in b] for b in group]
                n_targets = sum(e.n_targets for b in micro for e in b)
                lr = scheduler.get_last_lr()[0]
                loss_total = 0.0
                for b in micro:
                    s, _ = _loss_sum(model, collate(b, pad_id), device)
                    (s / n_targets).backward()
                    loss_total += float(s.detach())
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                pos += 1
                loss = loss_total / n_targets
                metrics.append({"step": step, "epoch": round(epoch + pos / len(groups), 4), "loss": loss, "lr": lr,
                                "grad_norm": float(grad_norm), "tokens": n_targets})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if pos == len(groups) or step == total:  # end of an epoch, or of training
                    eval_loss = _evaluate(model, eval_set, cfg, pad_id, device)
                    if eval_loss is not None:
                        metrics.append({"step": step, "epoch": round(epoch + pos / len(groups), 4),
                                        "eval_loss": eval_loss})
                        log.info("step %d: eval loss %.4f", step, eval_loss)
                    if pos == len(groups):
                        epoch, pos = epoch + 1, 0
                if (cfg.save_every and step % cfg.save_every == 0) or step == total:
                    _save_checkpoint(out, model, optimizer, scheduler, cfg, checkpoint_state(), device)
                if stop_after is not None and step >= stop_after and step < total:
                    if not (cfg.save_every and step % cfg.save_every == 0):
                        _save_checkpoint(out, model, optimizer, scheduler, cfg, checkpoint_state(), device)
                    interrupted = True
                    break
    finally:
        bar.close()

    rows = metrics.read()
    losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    tail = losses[-min(len(losses), groups_per_epoch):] if losses else []
    result = TrainExpanderResult(
        out=out, model_dir=None, adapter_dir=None, expand_config=None, step=step, total_steps=total,
        train_pairs=len(train_set), eval_pairs=len(eval_set), dropped=dropped,
        final_loss=sum(tail) / len(tail) if tail else None, eval_loss=evals[-1] if evals else None,
        interrupted=interrupted, resumed_from=ckpt, warnings=notes,
    )
    if interrupted:
        result.seconds = time.perf_counter() - t_start
        return result

    # --- outputs
    if not cfg.full:
        tmp = out / ".tmp-adapter"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        replace_dir(tmp, out / "adapter")
        result.adapter_dir = out / "adapter"
        merged = model.merge_and_unload()
    else:
        merged = model
    merged.eval()
    if cfg.gradient_checkpointing and hasattr(merged, "gradient_checkpointing_disable"):
        merged.gradient_checkpointing_disable()
    for p in merged.parameters():
        p.requires_grad_(False)
    tmp = out / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, out / "model")
    result.model_dir = out / "model"
    write_text_atomic(out / "expand.yaml", _expand_yaml(cfg, out / "model", dtype_name, pairs_path.resolve(),
                                                       out / "expand.yaml"))
    result.expand_config = out / "expand.yaml"
    result.seconds = time.perf_counter() - t_start
    write_text_atomic(out / "README.md", _readme(cfg, result, pairs_path, data_sha, len(pairs), dtype_name,
                                                  str(device), max(longest_train, longest_eval)))
    return result
