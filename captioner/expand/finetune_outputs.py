"""What a finished expander training leaves besides its checkpoints: the peft adapter, the merged
model with its tokenizer (an ordinary transformers folder), a ready expansion config (``expand.yaml``)
and the model card (``README.md``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from captioner.expand.finetune_config import TrainExpanderConfig, TrainExpanderResult
from densecap.files import replace_dir
from densecap.training import model_card

__all__ = ["expand_yaml", "readme", "save_trained"]


def _prompt_ref(prompts: str) -> str:
    """A built-in prompt name as it is; a file as an absolute path (expand.yaml may live elsewhere)."""
    from captioner.prompts import BUILTIN_DIR, resolve_prompt_file

    path = resolve_prompt_file(prompts).resolve()
    return prompts if path.parent == BUILTIN_DIR.resolve() else str(path)


def expand_yaml(cfg: TrainExpanderConfig, model_dir: Path, dtype_name: str, pairs_path: Path, path: Path) -> str:
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


def readme(cfg: TrainExpanderConfig, result: TrainExpanderResult, pairs_path: Path, data_sha: str,
           n_pairs: int, dtype_name: str, device: str, max_len_seen: int) -> str:
    """The model card: what was trained on what, the losses, how to use it, every setting."""
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    what = "every weight (full fine-tuning)" if cfg.full else (
        f"a LoRA adapter (rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}, target {cfg.lora.target_modules})")
    body = f"""# Prompt expander fine-tuned from {cfg.base_model}

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
  (per-step losses: `metrics.jsonl`)

## Use

    t2v expand "a red fox jumps into the snow" --config {result.out / "expand.yaml"} --family wan

`model/` is an ordinary transformers model (the adapter merged into the base weights) with its
tokenizer: any config can use it as `expander: {{type: hf, model: {result.out / "model"}}}`.
{"" if cfg.full else "`adapter/` is the peft adapter alone (`PeftModel.from_pretrained(base, adapter)`)."}
Keep `examples.k: 0`, the same prompts file and target_words.
"""
    tags = ["text-generation", "prompt-expansion", "full-fine-tune" if cfg.full else "lora"]
    return model_card(base_model=cfg.base_model, library="transformers", tags=tags, body=body,
                      settings=cfg.model_dump(mode="json"))


def save_trained(model: Any, tokenizer: Any, out: Path, cfg: TrainExpanderConfig) -> tuple[Path | None, Path]:
    """The adapter (LoRA only) and the merged model + tokenizer, each written under a temporary name
    and renamed; returns ``(adapter folder or None, model folder)``."""
    adapter_dir = None
    if not cfg.full:
        tmp = out / ".tmp-adapter"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        adapter_dir = out / "adapter"
        replace_dir(tmp, adapter_dir)
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
    return adapter_dir, out / "model"
