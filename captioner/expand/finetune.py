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

Every ``save_every`` steps, and at the last step, a checkpoint is written with the toolkit shared with
the video trainer (:mod:`densecap.training`: staged in ``checkpoints/.tmp-step-N``, marker written
last, renamed to ``step-N``): the trainable weights (peft adapter folder, or ``trainable.safetensors``
for full fine-tuning), the optimizer and LR-scheduler states (``torch.save``; read back with
``torch.load(weights_only=True)``), the RNG states (``rng-0.*``) and ``state.json`` (step, position in
the epoch, the config, the data file's sha256).
``--resume latest`` restores all of it, so the losses after a resume equal those of an uninterrupted
run; a checkpoint made with other training settings (or other data) is refused, naming what differs.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from captioner.expand.finetune_config import (
    IGNORED_ON_RESUME,
    LoraSettings,
    TrainExpanderConfig,
    TrainExpanderResult,
)
from captioner.expand.finetune_checkpoint import (
    check_resume,
    find_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
    trainable,
)
from captioner.expand.finetune_outputs import expand_yaml, readme, save_trained
from captioner.expand.sft_data import (
    IGNORE_INDEX,
    EncodedExample,
    ExpanderTrainingError,
    TrainingPair,
    collate,
    encode_conversation,
    end_of_turn_ids,
    load_training_pairs,
    split_pairs,
    training_messages,
)
from densecap.devices import resolve_device, resolve_dtype
from densecap.errors import ConfigError
from densecap.files import file_sha256
from densecap.files import write_json_atomic as write_text_atomic  # it writes any text
from densecap.training import MetricsLog, list_checkpoints

log = logging.getLogger(__name__)

__all__ = [
    "IGNORED_ON_RESUME", "IGNORE_INDEX", "EncodedExample", "ExpanderTrainingError", "LoraSettings",
    "TrainExpanderConfig", "TrainExpanderResult", "TrainingPair", "collate", "encode_conversation",
    "find_checkpoint", "load_training_pairs", "split_pairs", "train_expander", "training_messages",
]

# --------------------------------------------------------------------------------------- training


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


def _resolve_device_dtype(cfg: TrainExpanderConfig):
    import torch

    device = torch.device(resolve_device(cfg.device))
    return device, resolve_dtype(cfg.dtype, device, training=True)


@dataclass
class _Data:
    """The encoded training and held-out conversations."""

    pairs: int
    sha256: str
    train: list[EncodedExample]
    held_out: list[EncodedExample]
    dropped: int
    longest: int
    pad_id: int
    notes: list[str] = field(default_factory=list)


@dataclass
class _Session:
    """What the recipe's steps share."""

    cfg: TrainExpanderConfig
    out: Path
    pairs_path: Path
    device: Any
    dtype_name: str
    tokenizer: Any
    model: Any
    optimizer: Any
    scheduler: Any
    data: _Data
    total: int
    groups_per_epoch: int
    metrics: MetricsLog
    params: list[Any]  # the trainable parameters (what the optimizer steps and the clipping sees)
    step: int = 0
    epoch: int = 0
    pos: int = 0

    def checkpoint_state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.pos, "total_steps": self.total,
                "dtype": self.dtype_name, "data": {"path": str(self.pairs_path.resolve()), "sha256": self.data.sha256}}

    def save(self) -> Path:
        return save_checkpoint(self.out, self.model, self.optimizer, self.scheduler, self.cfg, self.checkpoint_state())


def _load_tokenizer(cfg: TrainExpanderConfig, model_path: str, where: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg.revision)
    except Exception as exc:  # OSError, hub errors...
        raise ExpanderTrainingError(f"base_model {where}: cannot load its tokenizer: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ExpanderTrainingError(f"base_model {where} has no chat template (is it an instruct/chat model?)")
    return tokenizer


def _encode_data(cfg: TrainExpanderConfig, pairs_path: Path, pairs: list[TrainingPair], data_sha: str, tokenizer,
                 model_path: str, where: str) -> _Data:
    """The pairs as the expander's own conversations (same prompt file and target_words), tokenised;
    conversations over ``max_length`` dropped and counted."""
    from captioner.backends import HFBackendConfig
    from captioner.expand.config import ExpandConfig
    from captioner.expand.expander import Expander

    expander = Expander(ExpandConfig(expander=HFBackendConfig(model=cfg.base_model), prompts=cfg.prompts,
                                     target_words=cfg.target_words, cache=False))
    try:
        from transformers import GenerationConfig

        gen_eos = GenerationConfig.from_pretrained(model_path, revision=cfg.revision).eos_token_id
    except Exception:  # noqa: BLE001 - no generation_config.json
        gen_eos = None
    end_ids = end_of_turn_ids(tokenizer, gen_eos)

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

    train_pairs, eval_pairs = split_pairs(pairs, cfg.eval_fraction, cfg.seed)
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
    return _Data(len(pairs), data_sha, train_set, eval_set, dropped,
                 max(longest_train, longest_eval), pad_id, notes)


def _load_model(cfg: TrainExpanderConfig, model_path: str, where: str, device, dtype):
    """The base model on ``device``, with a LoRA adapter (or every weight trainable)."""
    import torch
    from transformers import AutoModelForCausalLM

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
    return model


def _setup(pairs_path: Path, out: Path, cfg: TrainExpanderConfig, resume: str | None) -> tuple[_Session, Path | None]:
    """Everything up to the first step: data, model, optimizer, schedule, the checkpoint resumed from."""
    import torch
    from transformers import get_scheduler

    from captioner.modelrefs import resolve_model_ref

    metrics = MetricsLog(out / "metrics.jsonl")
    if resume is None and (list_checkpoints(out / "checkpoints") or metrics.path.exists()):
        raise ExpanderTrainingError(f"{out} already holds a training run; continue it with --resume latest, or "
                                    "choose another --out")
    pairs = load_training_pairs(pairs_path)  # a bad pairs file fails before anything loads
    data_sha = file_sha256(pairs_path)
    device, dtype = _resolve_device_dtype(cfg)
    dtype_name = str(dtype).removeprefix("torch.")
    ckpt = find_checkpoint(out, resume) if resume else None
    state = None
    if ckpt is not None:
        state = read_state(ckpt)
        check_resume(ckpt, state, cfg, data_sha, dtype_name)
    elif resume:
        log.info("no checkpoint in %s; starting from step 0", out / "checkpoints")
    model_path = resolve_model_ref(cfg.base_model)
    where = cfg.base_model + (f"@{cfg.revision}" if cfg.revision else "")
    tokenizer = _load_tokenizer(cfg, model_path, where)
    data = _encode_data(cfg, pairs_path, pairs, data_sha, tokenizer, model_path, where)
    groups_per_epoch = len(_epoch_groups(len(data.train), cfg, 0))
    total = cfg.max_steps or cfg.epochs * groups_per_epoch
    model = _load_model(cfg, model_path, where, device, dtype)
    params = list(trainable(model).values())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
                              num_training_steps=total)
    sess = _Session(cfg, out, pairs_path, device, dtype_name, tokenizer, model, optimizer, scheduler, data, total,
                    groups_per_epoch, metrics, params)
    if ckpt is not None and state is not None:
        load_checkpoint(ckpt, model, optimizer, scheduler, cfg)
        sess.step, sess.epoch, sess.pos = int(state["step"]), int(state["epoch"]), int(state["step_in_epoch"])
        log.info("resumed from %s (step %d of %d)", ckpt, sess.step, total)
    out.mkdir(parents=True, exist_ok=True)
    metrics.start(sess.step)
    write_text_atomic(out / "train_config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    log.info("%d training pairs, %d held out, %d dropped; %d steps (%d per epoch); %s trainable parameters "
             "on %s in %s", len(data.train), len(data.held_out), data.dropped, total, groups_per_epoch,
             f"{sum(p.numel() for p in sess.params):,}", device, dtype_name)
    return sess, ckpt


def _train_step(sess: _Session, group: list[list[int]], n_groups: int) -> float:
    """One optimizer step over the micro-batches of ``group``; the metrics line; returns the loss."""
    import torch

    micro = [[sess.data.train[i] for i in b] for b in group]
    n_targets = sum(e.n_targets for b in micro for e in b)
    lr = sess.scheduler.get_last_lr()[0]
    loss_total = 0.0
    for b in micro:
        s, _ = _loss_sum(sess.model, collate(b, sess.data.pad_id), sess.device)
        (s / n_targets).backward()
        loss_total += float(s.detach())
    grad_norm = torch.nn.utils.clip_grad_norm_(sess.params, sess.cfg.max_grad_norm)
    sess.optimizer.step()
    sess.scheduler.step()
    sess.optimizer.zero_grad(set_to_none=True)
    sess.step += 1
    sess.pos += 1
    loss = loss_total / n_targets
    sess.metrics.append({"step": sess.step, "epoch": round(sess.epoch + sess.pos / n_groups, 4), "loss": loss,
                         "lr": lr, "grad_norm": float(grad_norm), "tokens": n_targets})
    return loss


def _after_step(sess: _Session, n_groups: int, stop_after: int | None) -> bool:
    """Held-out loss at the end of an epoch (or of training), checkpoints; True when this call stops here."""
    cfg = sess.cfg
    if sess.pos == n_groups or sess.step == sess.total:
        eval_loss = _evaluate(sess.model, sess.data.held_out, cfg, sess.data.pad_id, sess.device)
        if eval_loss is not None:
            sess.metrics.append({"step": sess.step, "epoch": round(sess.epoch + sess.pos / n_groups, 4),
                                 "eval_loss": eval_loss})
            log.info("step %d: eval loss %.4f", sess.step, eval_loss)
        if sess.pos == n_groups:
            sess.epoch, sess.pos = sess.epoch + 1, 0
    saved = bool(cfg.save_every and sess.step % cfg.save_every == 0)
    if saved or sess.step == sess.total:
        sess.save()
    if stop_after is not None and sess.step >= stop_after and sess.step < sess.total:
        if not saved:
            sess.save()
        return True
    return False


def _result(sess: _Session, ckpt: Path | None, interrupted: bool) -> TrainExpanderResult:
    rows = sess.metrics.read()
    losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    tail = losses[-min(len(losses), sess.groups_per_epoch):] if losses else []
    return TrainExpanderResult(
        out=sess.out, model_dir=None, adapter_dir=None, expand_config=None, step=sess.step, total_steps=sess.total,
        train_pairs=len(sess.data.train), eval_pairs=len(sess.data.held_out), dropped=sess.data.dropped,
        final_loss=sum(tail) / len(tail) if tail else None, eval_loss=evals[-1] if evals else None,
        interrupted=interrupted, resumed_from=ckpt, warnings=list(sess.data.notes),
    )


def _finish(sess: _Session, result: TrainExpanderResult) -> None:
    """The adapter, the merged model, ``expand.yaml`` and the model card."""
    out, cfg = sess.out, sess.cfg
    result.adapter_dir, result.model_dir = save_trained(sess.model, sess.tokenizer, out, cfg)
    write_text_atomic(out / "expand.yaml", expand_yaml(cfg, result.model_dir, sess.dtype_name,
                                                       sess.pairs_path.resolve(), out / "expand.yaml"))
    result.expand_config = out / "expand.yaml"
    write_text_atomic(out / "README.md", readme(cfg, result, sess.pairs_path, sess.data.sha256, sess.data.pairs,
                                                sess.dtype_name, str(sess.device), sess.data.longest))


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
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    sess, ckpt = _setup(Path(pairs_path), Path(out_dir), cfg, resume)  # setup
    interrupted = False
    bar = tqdm(total=sess.total, initial=sess.step, desc="train-expander", unit="step", disable=not progress,
               dynamic_ncols=True)
    try:
        while sess.step < sess.total and not interrupted:
            groups = _epoch_groups(len(sess.data.train), cfg, sess.epoch)
            while sess.pos < len(groups) and sess.step < sess.total:
                loss = _train_step(sess, groups[sess.pos], len(groups))  # step
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{sess.scheduler.get_last_lr()[0]:.2e}")
                if _after_step(sess, len(groups), stop_after):  # after-step
                    interrupted = True
                    break
    finally:
        bar.close()
        sess.metrics.close()
    result = _result(sess, ckpt, interrupted)
    if not interrupted:
        _finish(sess, result)  # finish
    result.seconds = time.perf_counter() - t_start
    return result
