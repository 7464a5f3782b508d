"""`captioner train-expander`: assistant-only labels, training, checkpoints and resume, the merged model,
the expansion config it writes, and the CLI (all on the tiny random model, CPU)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.cli import cli
from captioner.configbase import load_config
from captioner.errors import ConfigError
from captioner.expand.finetune import (
    IGNORE_INDEX,
    ExpanderTrainingError,
    TrainExpanderConfig,
    collate,
    encode_conversation,
    load_training_pairs,
    split_pairs,
    train_expander,
    training_messages,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),  # inside peft
]

ROOT = Path(__file__).parent.parent
PAIRS = ROOT / "samples" / "pairs.jsonl"
TINY = ROOT / "configs" / "train-expander" / "tiny.yaml"


def tiny_cfg(*overrides: str) -> TrainExpanderConfig:
    return load_config(TrainExpanderConfig, TINY, list(overrides))


def losses(out: Path, key: str = "loss") -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]


@pytest.fixture(scope="module")
def tokenizer_and_expander(tiny_models):
    from transformers import AutoTokenizer

    from captioner.backends import HFBackendConfig
    from captioner.expand import ExpandConfig, Expander

    tok = AutoTokenizer.from_pretrained(tiny_models["llm"])
    expander = Expander(ExpandConfig(expander=HFBackendConfig(model=str(tiny_models["llm"])), cache=False))
    return tok, expander


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory) -> Path:
    """One run of the tiny preset through the CLI (6 steps, checkpoints at 3 and 6)."""
    out = tmp_path_factory.mktemp("expander") / "run"
    result = CliRunner().invoke(cli, ["train-expander", str(PAIRS), "--out", str(out), "--config", "tiny",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"model: {out / 'model'}" in result.output
    assert f"expansion config: {out / 'expand.yaml'}" in result.output
    assert "t2v expand" in result.output
    return out


# ------------------------------------------------------------------------------------------ data


def test_label_mask_covers_exactly_the_reply(tokenizer_and_expander):
    tok, expander = tokenizer_and_expander
    pair = load_training_pairs(PAIRS)[0]
    messages = training_messages(expander, pair.prompt, pair.caption)
    # the inference conversation, built by the expander itself with no examples, then the reply
    conv = expander.conversation(pair.prompt, [])
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[:2] == [{"role": m.role, "content": m.text} for m in conv]
    assert "about 100 words" in messages[0]["content"]
    assert messages[1]["content"] == f"<prompt>{pair.prompt}</prompt>"

    ids, labels = encode_conversation(tok, messages, end_ids={tok.eos_token_id}, name="tiny")
    assert len(ids) == len(labels)
    kept = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert kept == list(range(kept[0], kept[-1] + 1))  # one contiguous span
    assert [ids[i] for i in kept] == [labels[i] for i in kept]
    assert tok.decode([ids[i] for i in kept]) == pair.caption + tok.eos_token  # caption + <|im_end|>
    prompt_text = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids[: kept[0]]) == prompt_text  # what the hf backend sends at inference
    assert tok.decode(ids[kept[-1] + 1 :]) == "\n"  # the template's newline after the turn: masked

    batch = collate([type("E", (), {"input_ids": ids, "labels": labels})(),
                     type("E", (), {"input_ids": ids[:5], "labels": [IGNORE_INDEX] * 5})()], pad_id=0)
    assert batch["input_ids"].shape == (2, len(ids))
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * (len(ids) - 5)  # right padding
    assert set(batch["labels"][1].tolist()) == {IGNORE_INDEX}


def test_template_without_a_clean_prefix_is_refused(tokenizer_and_expander):
    tok, expander = tokenizer_and_expander
    odd = copy.deepcopy(tok)
    odd.chat_template = (
        "{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + ':\\n' + m['content'] + '<|im_end|>\\n' -}}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )
    messages = training_messages(expander, "a red fox", "A red fox jumps into deep snow.")
    with pytest.raises(ExpanderTrainingError, match="my-model.*not a prefix"):
        encode_conversation(odd, messages, end_ids={tok.eos_token_id}, name="my-model")


def test_pairs_and_chat_export_read_the_same(tmp_path):
    from captioner.pairs import export_sft, load_pairs

    pairs = load_training_pairs(PAIRS)
    assert len(pairs) == 9
    sft = export_sft(load_pairs(PAIRS), tmp_path / "sft.jsonl")
    chat = load_training_pairs(sft)
    assert [(p.prompt, p.caption) for p in chat] == [(p.prompt, p.caption) for p in pairs]
    train, held = split_pairs(pairs, 0.1, seed=0)
    assert len(held) == 1 and len(train) == 8 and not {p.id for p in held} & {p.id for p in train}
    assert split_pairs(pairs, 0.1, seed=0) == (train, held)
    assert split_pairs(pairs, 0.0, seed=0) == (pairs, [])


def test_too_long_for_max_length_is_an_error(tiny_models, tmp_path):
    with pytest.raises(ExpanderTrainingError, match="max_length 8"):
        train_expander(PAIRS, tmp_path / "out", tiny_cfg("max_length=8"), progress=False)


# -------------------------------------------------------------------------------------- training


def test_overfitting_two_pairs_lowers_the_loss(tiny_models, tmp_path):
    two = tmp_path / "two.jsonl"
    two.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:2]))
    cfg = tiny_cfg("max_steps=20", "lr=1e-2", "warmup_ratio=0", "eval_fraction=0", "save_every=null")
    result = train_expander(two, tmp_path / "out", cfg, progress=False)
    curve = [v for _, v in losses(tmp_path / "out")]
    assert len(curve) == 20 and result.step == 20 and result.train_pairs == 2
    assert curve[-1] < curve[0] - 0.1
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
    assert result.eval_loss is None and losses(tmp_path / "out", "eval_loss") == []


def test_resume_gives_the_same_losses(trained, tmp_path):
    out = tmp_path / "run"
    first = train_expander(PAIRS, out, tiny_cfg(), progress=False, stop_after=3)
    assert first.interrupted and first.step == 3 and first.model_dir is None
    assert not (out / "model").exists() and (out / "checkpoints" / "step-3" / "state.json").is_file()
    second = train_expander(PAIRS, out, tiny_cfg(), progress=False, resume="latest")
    assert second.resumed_from == out / "checkpoints" / "step-3" and second.step == 6

    for key in ("loss", "eval_loss"):
        once, resumed = losses(trained, key), losses(out, key)
        assert [s for s, _ in resumed] == [s for s, _ in once]  # no step logged twice
        assert [v for _, v in resumed] == pytest.approx([v for _, v in once], abs=1e-6)

    from safetensors.torch import load_file

    a = load_file(str(trained / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert set(a) == set(b) and all((a[k] - b[k]).abs().max() < 1e-6 for k in a)


def test_a_checkpoint_of_the_earlier_layout_resumes(trained, tmp_path):
    """A run stopped before the shared checkpoint toolkit (no COMPLETE marker, the torch RNG state in
    rng.safetensors) resumes after the upgrade instead of starting over, with the same losses."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    train_expander(PAIRS, out, tiny_cfg(), progress=False, stop_after=3)
    ckpt = out / "checkpoints" / "step-3"
    rng = load_file(str(ckpt / "rng-0.safetensors"))
    save_file({"torch_cpu": rng["torch_cpu"]}, str(ckpt / "rng.safetensors"))  # the earlier layout
    for name in ("COMPLETE", "rng-0.safetensors", "rng-0.json"):
        (ckpt / name).unlink()
    second = train_expander(PAIRS, out, tiny_cfg(), progress=False, resume="latest")
    assert second.resumed_from == ckpt and second.step == 6
    assert (ckpt / "COMPLETE").is_file() and not (ckpt / "rng.safetensors").exists()
    once, resumed = losses(trained, "loss"), losses(out, "loss")
    assert [v for _, v in resumed] == pytest.approx([v for _, v in once], abs=1e-6)


def test_full_fine_tuning_and_dropped_pairs(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from captioner.backends import HFBackendConfig
    from captioner.expand import ExpandConfig, Expander

    tok = AutoTokenizer.from_pretrained(tiny_models["llm"])
    expander = Expander(ExpandConfig(expander=HFBackendConfig(model=str(tiny_models["llm"])), cache=False))
    lengths = sorted(len(encode_conversation(tok, training_messages(expander, p.prompt, p.caption))[0])
                     for p in load_training_pairs(PAIRS))
    limit = lengths[-3]  # the two longest are dropped (or more, on ties)
    dropped = sum(n > limit for n in lengths)
    cfg = tiny_cfg("full=true", "max_steps=2", f"max_length={limit}", "save_every=null")
    result = train_expander(PAIRS, tmp_path / "out", cfg, progress=False)
    assert result.dropped == dropped >= 2
    assert result.train_pairs + result.eval_pairs == 9 - dropped
    assert any(f"dropped {dropped} of 9 pairs" in w for w in result.warnings)
    assert result.adapter_dir is None and not (tmp_path / "out" / "adapter").exists()
    assert (tmp_path / "out" / "checkpoints" / "step-2" / "trainable.safetensors").is_file()
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    readme = (tmp_path / "out" / "README.md").read_text()
    assert f"{dropped} dropped" in readme and "full fine-tuning" in readme


# --------------------------------------------------------------------------------------- outputs


def test_outputs_load_and_merged_equals_base_plus_adapter(trained, tiny_models):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from captioner.backends import HFBackendConfig, Message, build_backend
    from captioner.expand import ExpandConfig, Expander

    for name in ("adapter", "model", "expand.yaml", "train_config.yaml", "metrics.jsonl", "README.md"):
        assert (trained / name).exists(), name
    readme = (trained / "README.md").read_text()
    assert "tiny://llm" in readme and "sha256" in readme and "eval" in readme
    assert load_config(TrainExpanderConfig, trained / "train_config.yaml") == tiny_cfg()

    backend = build_backend(HFBackendConfig(model=str(trained / "model"), device="cpu", dtype="float32",
                                            max_new_tokens=8))
    try:
        [answer] = backend.generate([[Message.user("a red fox in the snow")]])
        assert isinstance(answer, str) and answer
    finally:
        backend.close()

    cfg = load_config(ExpandConfig, trained / "expand.yaml",
                      ["cache=false", "expander.device=cpu", "max_new_tokens=24", "checks.max_retries=0"])
    assert cfg.expander.model == str((trained / "model").resolve())
    assert cfg.examples.k == 0 and cfg.prompts == "expand-v1" and cfg.target_words == 100
    with Expander(cfg) as expander:
        result = expander.expand_one("a red fox jumps into the snow")
    assert result.status in ("expanded", "fallback") and result.text and result.examples == []

    tok = AutoTokenizer.from_pretrained(trained / "model")
    ids = tok("A red fox jumps into deep snow.", return_tensors="pt").input_ids
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_models["llm"], dtype=torch.float32).eval()
        plain = base(ids).logits
        lora = PeftModel.from_pretrained(base, trained / "adapter").eval()
        with_adapter = lora(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(trained / "model", dtype=torch.float32).eval()(ids).logits
    assert (with_adapter - merged).abs().max() < 1e-4
    assert (with_adapter - plain).abs().max() > 0  # training changed the model


# ------------------------------------------------------------------------------------------- CLI


def test_cli_bad_pairs_file(tiny_models, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4"}\n')
    result = runner.invoke(cli, ["train-expander", str(bad), "--out", str(tmp_path / "o"), "--config", "tiny"])
    assert result.exit_code == 1
    assert f"error: {bad}:1" in result.output and "captioner pairs" in result.output
    assert not (tmp_path / "o").exists()

    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("this is not json\n")
    result = runner.invoke(cli, ["train-expander", str(garbage), "--out", str(tmp_path / "o"), "--config", "tiny"])
    assert result.exit_code == 1 and str(garbage) in result.output

    missing = tmp_path / "missing.jsonl"
    result = runner.invoke(cli, ["train-expander", str(missing), "--out", str(tmp_path / "o"), "--config", "tiny"])
    assert result.exit_code == 1 and f"{missing}: pairs file not found" in result.output


def test_cli_refuses_to_resume_with_other_settings(trained, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    runner = CliRunner()
    args = ["train-expander", str(PAIRS), "--out", str(run), "--config", "tiny"]
    result = runner.invoke(cli, [*args, "--resume", "latest", "--set", "lr=0.5", "--set", "lora.rank=8"])
    assert result.exit_code == 1
    assert "cannot resume" in result.output and "lora.rank" in result.output and "lr:" in result.output
    assert str(run / "checkpoints" / "step-6") in result.output
    other = tmp_path / "other.jsonl"
    other.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:5]))
    result = runner.invoke(cli, ["train-expander", str(other), "--out", str(run), "--config", "tiny",
                                 "--resume", "latest"])
    assert result.exit_code == 1 and "data (pairs file sha256)" in result.output
    result = runner.invoke(cli, args)  # no --resume on a folder holding a run
    assert result.exit_code == 1 and "already holds a training run" in result.output


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="device"):
        tiny_cfg("device=tpu")
    with pytest.raises(ConfigError, match="lora.rank"):
        tiny_cfg("lora.rank=0")
    assert load_config(TrainExpanderConfig, ROOT / "configs" / "train-expander" / "default.yaml").base_model == (
        "Qwen/Qwen2.5-1.5B-Instruct")


def test_resume_latest_passes_over_a_damaged_newest_checkpoint(tmp_path, caplog):
    """A kill or a full disk can leave the newest checkpoint unreadable: `latest` resumes from the
    newest one that reads, and says which it skipped; none readable is one clear error."""
    from safetensors.torch import save_file
    import torch

    from captioner.expand.finetune import ExpanderTrainingError, find_checkpoint

    for step in (2, 4):
        ckpt = tmp_path / "checkpoints" / f"step-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "state.json").write_text(json.dumps({"step": step}))
        (ckpt / "COMPLETE").write_text(json.dumps({"step": step}))  # the marker a finished save writes last
        save_file({"w": torch.ones(4)}, str(ckpt / "adapter_model.safetensors"))
    newest = tmp_path / "checkpoints" / "step-4" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[:20])  # cut short, as by a full disk
    with caplog.at_level("WARNING"):
        assert find_checkpoint(tmp_path, "latest") == tmp_path / "checkpoints" / "step-2"
    assert "step-4 is unreadable" in caplog.text and "resuming from" in caplog.text
    older = tmp_path / "checkpoints" / "step-2" / "adapter_model.safetensors"
    older.write_bytes(b"\x00" * 5)
    with pytest.raises(ExpanderTrainingError, match="no checkpoint can be read"):
        find_checkpoint(tmp_path, "latest")
