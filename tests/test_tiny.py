"""The tiny random models: real architectures, saved and loaded like hub checkpoints, deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from captioner import tiny
from captioner.tiny import build_tiny_clip, build_tiny_llm, build_tiny_vlm, is_complete, make_tiny


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------------
# building, caching


def test_make_tiny_layout(tiny_models):
    assert set(tiny_models) == {"vlm", "llm", "clip"}
    for kind, path in tiny_models.items():
        assert path.is_dir() and is_complete(path, kind)
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
        assert _dir_size(path) < 5 * 1024 * 1024, f"{kind} is {_dir_size(path)} bytes"
    # no temporary build folders left behind
    assert not [p for p in tiny_models["vlm"].parent.iterdir() if ".building-" in p.name]


def test_make_tiny_skips_complete_and_redoes_incomplete(tmp_path, monkeypatch):
    calls: list[str] = []

    def fake(kind):
        def build(path, seed=0):
            calls.append(kind)
            return tiny._build_atomically(path, kind, seed, lambda d: (d / "weights").write_text(kind))

        return build

    monkeypatch.setattr(tiny, "_BUILDERS", {k: fake(k) for k in tiny.TINY_KINDS})
    paths = make_tiny(tmp_path)
    assert calls == ["vlm", "llm", "clip"] and paths["llm"] == (tmp_path / "llm").resolve()

    calls.clear()
    assert make_tiny(tmp_path) == paths
    assert calls == []  # all complete: nothing rebuilt

    # a build killed half way has no marker (and maybe junk): it is redone from scratch
    (paths["llm"] / tiny._MARKER).unlink()
    (paths["llm"] / "half-written.bin").write_bytes(b"\0" * 10)
    # a marker from an older builder version counts as incomplete too
    marker = paths["clip"] / tiny._MARKER
    marker.write_text(json.dumps({"version": -1, "kind": "clip", "seed": 0}))
    make_tiny(tmp_path)
    assert calls == ["llm", "clip"]
    assert not (paths["llm"] / "half-written.bin").exists()
    assert is_complete(paths["llm"], "llm") and is_complete(paths["clip"], "clip")

    calls.clear()
    make_tiny(tmp_path, force=True)
    assert calls == ["vlm", "llm", "clip"]


def test_default_dir_env(monkeypatch, tmp_path):
    import importlib

    monkeypatch.setenv("DENSECAP_TINY_DIR", str(tmp_path / "here"))
    mod = importlib.reload(tiny)
    try:
        assert mod.DEFAULT_TINY_DIR == tmp_path / "here"
    finally:
        monkeypatch.delenv("DENSECAP_TINY_DIR")
        importlib.reload(tiny)


def test_same_seed_same_bytes(tiny_models, tmp_path):
    for kind, builder in (("llm", build_tiny_llm), ("vlm", build_tiny_vlm), ("clip", build_tiny_clip)):
        again = builder(tmp_path / f"{kind}-again", seed=0)
        assert _same_tensors(_tensors(tiny_models[kind]), _tensors(again)), kind
        for name in ("tokenizer.json", "config.json", "processor_config.json", "preprocessor_config.json"):
            if (again / name).exists():
                assert (again / name).read_bytes() == (tiny_models[kind] / name).read_bytes(), (kind, name)
    other = build_tiny_llm(tmp_path / "llm-seed1", seed=1)
    assert not _same_tensors(_tensors(tiny_models["llm"]), _tensors(other))
    assert (other / "tokenizer.json").read_bytes() == (tiny_models["llm"] / "tokenizer.json").read_bytes()


# --------------------------------------------------------------------------------------------------
# tokenizer


def test_tokenizer_is_real_and_matches_config(tiny_models):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["vlm"])
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert 1000 <= len(tok) <= 2000
    text = "A woman in a red coat walks along a quiet street, then turns left (at 00:01:20)! Ünïcode ok."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) * 0.6  # BPE merges real words

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    for s in specials:
        assert tok(s)["input_ids"] == [tok.convert_tokens_to_ids(s)]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"

    cfg = AutoConfig.from_pretrained(tiny_models["vlm"])
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    llm_cfg = AutoConfig.from_pretrained(tiny_models["llm"])
    assert llm_cfg.model_type == "qwen2" and llm_cfg.vocab_size == len(
        AutoTokenizer.from_pretrained(tiny_models["llm"])
    )


def test_chat_templates(tiny_models):
    from transformers import AutoTokenizer

    from captioner.backends.hf import load_processor

    proc = load_processor(str(tiny_models["vlm"]))
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    ]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    llm_tok = AutoTokenizer.from_pretrained(tiny_models["llm"])
    text = llm_tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------------------------------
# models


def test_vlm_roundtrip_and_vision_path(tiny_models, tmp_path):
    from transformers import AutoModelForImageTextToText

    from captioner.backends.hf import load_processor

    path = tiny_models["vlm"]
    model, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    model.save_pretrained(tmp_path / "resaved")
    assert _same_tensors(_tensors(path), _tensors(tmp_path / "resaved"))

    proc = load_processor(str(path))
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    a = Image.new("RGB", (100, 80), (250, 10, 10))
    b = Image.linear_gradient("L").convert("RGB").resize((100, 80))
    calls = []
    hook = model.model.visual.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    logits = []
    with torch.inference_mode():
        for img in (a, b):
            inputs = proc(text=[prompt], images=[img], return_tensors="pt")
            n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
            assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // 4 >= 4
            logits.append(model(**inputs).logits[0, -1])
    hook.remove()
    assert len(calls) == 2  # pixel_values went through the vision tower
    assert not torch.allclose(logits[0], logits[1])  # and changed the answer


def test_llm_and_clip_roundtrip(tiny_models):
    from transformers import AutoImageProcessor, AutoModelForCausalLM, CLIPVisionModelWithProjection

    model, info = AutoModelForCausalLM.from_pretrained(tiny_models["llm"], output_loading_info=True)
    assert type(model).__name__ == "Qwen2ForCausalLM" and not info["missing_keys"]
    clip, info = CLIPVisionModelWithProjection.from_pretrained(tiny_models["clip"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ip = AutoImageProcessor.from_pretrained(tiny_models["clip"])
    px = ip(images=[Image.new("RGB", (90, 60), (1, 2, 3))], return_tensors="pt")["pixel_values"]
    assert tuple(px.shape) == (1, 3, 32, 32)
    with torch.inference_mode():
        out = clip(pixel_values=px)
    assert tuple(out.image_embeds.shape) == (1, 32)
