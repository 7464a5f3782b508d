"""The hf backend on the tiny random Qwen2.5-VL and Qwen2 models (same code path as real hub ids)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from captioner.backends import HFBackendConfig, build_backend
from captioner.backends.base import Message, prepare_image
from captioner.errors import BackendError, ConfigError

MAX_NEW = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vlm(tiny_models):
    b = build_backend(
        HFBackendConfig(model=str(tiny_models["vlm"]), max_new_tokens=MAX_NEW, batch_size=4, device="cpu")
    )
    yield b
    b.close()


@pytest.fixture(scope="module")
def llm(tiny_models):
    b = build_backend(
        HFBackendConfig(model=str(tiny_models["llm"]), max_new_tokens=MAX_NEW, batch_size=3, device="cpu")
    )
    yield b
    b.close()


def _noise(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def vlm_conversations():
    a, b, c = _noise(64, 64, 0), _noise(140, 100, 1), _noise(200, 30, 2)
    return [
        [Message.system("You describe video frames."), Message.user(a, "Describe this frame.")],
        [Message.user("A text-only question, a little longer than the others, about a video.")],
        [Message.user(b, c, "What changed between these two frames?")],
        [Message.user(c, "Describe.")],
        [Message.user(b, "Describe."), Message.assistant("A picture."), Message.user("More detail.")],
    ]


LLM_CONVERSATIONS = [
    [Message.user("Expand: a cat on a table.")],
    [Message.system("Be brief."), Message.user("Hello there, how are you today?")],
    [Message.user("x")],
    [Message.user("A much longer prompt about a dog running along a beach at sunset. " * 4)],
]


def test_vlm_with_images(vlm, vlm_conversations):
    assert vlm.kind == "vlm" and vlm.supports_images and vlm.name == "hf"
    out = vlm.generate(vlm_conversations)
    assert len(out) == len(vlm_conversations)
    assert all(isinstance(t, str) and t.strip() == t and t for t in out)


def test_llm_text_only(llm):
    assert llm.kind == "llm" and not llm.supports_images
    out = llm.generate(LLM_CONVERSATIONS)
    assert len(out) == len(LLM_CONVERSATIONS) and all(out)


def test_greedy_is_deterministic(vlm, llm, vlm_conversations):
    assert vlm.generate(vlm_conversations) == vlm.generate(vlm_conversations)
    assert llm.generate(LLM_CONVERSATIONS) == llm.generate(LLM_CONVERSATIONS)


def test_batched_equals_one_by_one(vlm, llm, vlm_conversations):
    # left padding + attention mask: batch composition must not change greedy text
    assert vlm.generate(vlm_conversations) == [vlm.generate([c])[0] for c in vlm_conversations]
    assert llm.generate(LLM_CONVERSATIONS) == [llm.generate([c])[0] for c in LLM_CONVERSATIONS]


def test_images_change_the_answer(vlm):
    prompt = "Describe this frame."
    images = [
        Image.new("RGB", (96, 96), (240, 20, 20)),
        Image.new("RGB", (96, 96), (20, 20, 240)),
        Image.linear_gradient("L").convert("RGB").resize((96, 96)),
    ]
    outs = [vlm.generate([[Message.user(img, prompt)]])[0] for img in images]
    outs.append(vlm.generate([[Message.user(prompt)]])[0])
    assert len(set(outs)) == 4, outs


def test_max_new_tokens_override(llm):
    conv = [LLM_CONVERSATIONS[0]]
    short = llm.generate(conv, max_new_tokens=2)[0]
    long = llm.generate(conv)[0]
    assert 0 < len(short) < len(long)


def test_seeded_sampling(tiny_models):
    def run(seed):
        cfg = HFBackendConfig(
            model=str(tiny_models["llm"]), max_new_tokens=MAX_NEW, temperature=1.0, top_p=0.95, seed=seed, device="cpu"
        )
        with build_backend(cfg) as b:
            return b.generate(LLM_CONVERSATIONS), b.generate(LLM_CONVERSATIONS), b.describe()

    a1, a2, d = run(1)
    b1, _, _ = run(1)
    c1, _, _ = run(2)
    assert a1 == a2 == b1  # same seed, same text (also across backend instances)
    assert a1 != c1
    assert d["generation"]["do_sample"] is True and d["generation"]["top_k"] == 0
    assert d["temperature"] == 1.0 and d["top_p"] == 0.95 and d["seed"] == 1


def test_sampling_leaves_global_rng_alone(tiny_models):
    import torch

    cfg = HFBackendConfig(model=str(tiny_models["llm"]), max_new_tokens=4, temperature=0.7, seed=3, device="cpu")
    with build_backend(cfg) as b:
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        b.generate(LLM_CONVERSATIONS[:1])
        assert torch.equal(torch.rand(3), expected)


def test_llm_rejects_images(llm):
    with pytest.raises(BackendError, match="images.*text-only"):
        llm.generate([[Message.user("fine")], [Message.user(_noise(32, 32, 0), "what is this?")]])


def test_wrong_kind_is_a_clear_error(tiny_models):
    with pytest.raises(BackendError, match="not a vision-language model"):
        build_backend(HFBackendConfig(model=str(tiny_models["llm"]), kind="vlm"))
    with pytest.raises(BackendError, match="cannot load llm"):
        build_backend(HFBackendConfig(model=str(tiny_models["vlm"]), kind="llm"))


def test_max_image_side_downscales_before_the_processor(tiny_models):
    big = _noise(400, 300, 5)
    cfg = HFBackendConfig(model=str(tiny_models["vlm"]), max_new_tokens=8, max_image_side=60, device="cpu")
    with build_backend(cfg) as b:
        got = b.generate([[Message.user(big, "Describe.")]])
    plain = HFBackendConfig(model=str(tiny_models["vlm"]), max_new_tokens=8, device="cpu")
    with build_backend(plain) as b:
        assert b.generate([[Message.user(prepare_image(big, 60), "Describe.")]]) == got
        assert b.generate([[Message.user(big, "Describe.")]]) != got


def test_describe(vlm, tiny_models, monkeypatch):
    d = vlm.describe()
    assert d["backend"] == "hf" and d["model"] == str(tiny_models["vlm"])
    assert "revision" in d and d["kind"] == "vlm"
    assert d["dtype"] == "float32" and d["device"] == "cpu"
    assert d["max_new_tokens"] == MAX_NEW and d["temperature"] == 0.0 and d["batch_size"] == 4
    assert d["generation"]["do_sample"] is False
    text = json.dumps(d)  # records are JSON
    assert "token" not in text.lower().replace("max_new_tokens", "")


def test_bad_model_path_is_backend_error(tmp_path):
    with pytest.raises(BackendError, match="nope"):
        build_backend(HFBackendConfig(model=str(tmp_path / "nope")))


def test_config_validation():
    with pytest.raises(ConfigError):
        build_backend({"type": "hf", "model": "m", "batch_size": 0})
    with pytest.raises(ConfigError):
        build_backend({"type": "hf", "model": "m", "temprature": 0.5})
    with pytest.raises(ConfigError):
        build_backend({"type": "vllm", "model": "m"})
    cfg = HFBackendConfig(model="m")
    assert (cfg.batch_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.dtype, cfg.device) == (
        8,
        256,
        0.0,
        1.0,
        "auto",
        "auto",
    )


def test_closed_backend_refuses(tiny_models):
    b = build_backend({"type": "hf", "model": str(tiny_models["llm"]), "max_new_tokens": 2, "device": "cpu"})
    assert b.generate([]) == []
    b.close()
    b.close()
    with pytest.raises(BackendError, match="close"):
        b.generate(LLM_CONVERSATIONS[:1])


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_cuda_auto_device_and_bf16(tiny_models, vlm_conversations):
    # device/dtype "auto" on a GPU machine: cuda + bfloat16 (batch invariance is not promised in bf16)
    with build_backend(HFBackendConfig(model=str(tiny_models["vlm"]), max_new_tokens=MAX_NEW)) as b:
        d = b.describe()
        assert d["device"].startswith("cuda") and d["dtype"] == "bfloat16"
        out = b.generate(vlm_conversations)
        assert len(out) == len(vlm_conversations) and all(out)
        assert b.generate(vlm_conversations) == out
    cfg = HFBackendConfig(model=str(tiny_models["llm"]), max_new_tokens=MAX_NEW, temperature=1.0, seed=5)
    with build_backend(cfg) as b:
        assert b.generate(LLM_CONVERSATIONS) == b.generate(LLM_CONVERSATIONS)
