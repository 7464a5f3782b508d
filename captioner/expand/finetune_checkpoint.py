"""The expander trainer's checkpoints, on the toolkit shared with the video trainer
(:mod:`densecap.training`): the trainable weights (the peft adapter folder, or
``trainable.safetensors`` for full fine-tuning), optimizer and LR-scheduler states, RNG states and
``state.json`` (step, position in the epoch, resolved dtype, the config, the data file's sha256). A
checkpoint made with other settings or other data is refused, naming what differs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from captioner.expand.finetune_config import IGNORED_ON_RESUME, TrainExpanderConfig
from captioner.expand.sft_data import ExpanderTrainingError
from densecap.files import write_json_atomic as write_text_atomic  # it writes any text
from densecap.training import (
    commit_checkpoint,
    config_diffs,
    read_checkpoint_state,
    staging_dir,
)
from densecap.training import find_checkpoint as _find_checkpoint
from densecap.training.rng import load_rng, save_rng

__all__ = ["CHECKPOINT_FORMAT", "adopt_legacy", "check_resume", "find_checkpoint", "load_checkpoint", "read_state",
           "save_checkpoint", "trainable"]

log = logging.getLogger("captioner.expand.finetune")

CHECKPOINT_FORMAT = 1


def find_checkpoint(out_dir: str | Path, resume: str) -> Path | None:
    """``latest``: the newest complete checkpoint under ``OUT/checkpoints`` that can be read (a damaged
    newer one is passed over with a warning; None when there is none); otherwise a checkpoint folder.
    Checkpoints of the earlier layout are adopted first (:func:`adopt_legacy`)."""
    named = [] if resume == "latest" else [Path(resume).expanduser()]
    root = Path(out_dir) / "checkpoints"
    for folder in [*(sorted(root.glob("step-*")) if root.is_dir() else []), *named]:
        if folder.is_dir():
            adopt_legacy(folder)
    return _find_checkpoint(out_dir, resume, error=ExpanderTrainingError)


def adopt_legacy(folder: Path) -> bool:
    """Bring a checkpoint of the earlier layout (before the shared toolkit: no ``COMPLETE`` marker, the
    torch RNG states in ``rng.safetensors``) to the current one, so a run started before the upgrade
    resumes instead of starting over. Such a folder was renamed into place only once complete, so its
    ``state.json`` (format 1) and ``rng.safetensors`` mean it is whole. Returns True when adopted."""
    from safetensors.torch import load_file

    from densecap.training import MARKER
    from densecap.training.checkpoints import write_json
    from densecap.training.rng import capture_rng

    legacy_rng = folder / "rng.safetensors"
    if (folder / MARKER).exists() or not legacy_rng.is_file() or not (folder / "state.json").is_file():
        return False
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        old = load_file(str(legacy_rng))
    except Exception as exc:  # noqa: BLE001 -- unreadable: left as it is, passed over like any damaged one
        log.warning("%s: an earlier-layout checkpoint that cannot be read (%s); not adopted", folder, exc)
        return False
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        return False
    from safetensors.torch import save_file

    _, info = capture_rng()  # numpy and Python states: the expander trainer draws nothing from them
    tensors = {"torch_cpu": old["torch_cpu"], **({"cuda.0": old["cuda"]} if "cuda" in old else {})}
    save_file(tensors, str(folder / "rng-0.safetensors"))
    write_json(folder / "rng-0.json", info)
    legacy_rng.unlink()
    write_json(folder / MARKER, {"step": state.get("step"), "files": sorted(p.name for p in folder.iterdir()),
                                 "adopted": "earlier checkpoint layout"})
    log.info("%s: checkpoint of the earlier layout adopted", folder)
    return True


def trainable(model) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, model, optimizer, scheduler, cfg: TrainExpanderConfig, state: dict[str, Any]) -> Path:
    import torch
    from safetensors.torch import save_file

    step = state["step"]
    tmp = staging_dir(out / "checkpoints", step)
    if cfg.full:
        save_file({n: p.detach().to("cpu").contiguous() for n, p in trainable(model).items()},
                  str(tmp / "trainable.safetensors"))
    else:
        model.save_pretrained(str(tmp / "adapter"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    save_rng(tmp)
    write_text_atomic(tmp / "state.json", json.dumps(
        {"format": CHECKPOINT_FORMAT, **state, "config": cfg.model_dump(mode="json"), "saved_at": time.time()},
        indent=2) + "\n")
    final = commit_checkpoint(tmp, step)
    log.info("saved checkpoint %s", final)
    return final


def _load_weights(path: Path, model, cfg: TrainExpanderConfig) -> None:
    import torch
    from safetensors.torch import load_file

    if cfg.full:
        sd = load_file(str(path / "trainable.safetensors"))
        params = trainable(model)
        if set(sd) != set(params):
            raise ExpanderTrainingError(f"{path}: the saved weights do not fit the model "
                                        f"(missing {sorted(set(params) - set(sd))[:3]}, "
                                        f"unexpected {sorted(set(sd) - set(params))[:3]})")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(sd[n].to(device=p.device, dtype=p.dtype))
        return
    from peft import set_peft_model_state_dict

    weights = path / "adapter" / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExpanderTrainingError(f"{path}: no adapter/adapter_model.safetensors in the checkpoint")
    result = set_peft_model_state_dict(model, load_file(str(weights)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ExpanderTrainingError(f"{path}: the saved adapter does not fit the model (missing {missing[:3]}, "
                                    f"unexpected {list(result.unexpected_keys)[:3]})")


def load_checkpoint(path: Path, model, optimizer, scheduler, cfg: TrainExpanderConfig) -> None:
    import torch

    _load_weights(path, model, cfg)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    load_rng(path)


def read_state(path: Path) -> dict[str, Any]:
    state = read_checkpoint_state(path, error=ExpanderTrainingError)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ExpanderTrainingError(f"{path}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return state


def check_resume(path: Path, state: dict[str, Any], cfg: TrainExpanderConfig, data_sha: str, dtype_name: str) -> None:
    diffs = config_diffs(state.get("config", {}), cfg.model_dump(mode="json"), ignored=IGNORED_ON_RESUME)
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
