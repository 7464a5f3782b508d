"""Frame encoders: the weight-free pixel encoder and the CLIP wrapper (tiny random CLIP, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captioner.configbase import load_config
from captioner.encoders import ClipEncoder, EncoderConfig, PixelEncoder, build_encoder
from captioner.errors import ConfigError


def _scene_a(h=120, w=160):
    """Horizontal red->blue ramp with a white box and a dark bar."""
    x = np.linspace(0, 1, w)[None, :, None]
    img = np.concatenate([255 * (1 - x), 40 * np.ones_like(x), 255 * x], axis=2) * np.ones((h, 1, 1))
    img[30:70, 40:90] = 255
    img[90:100, :] = 20
    return img.clip(0, 255).astype(np.uint8)


def _scene_b(h=120, w=160):
    """Green/yellow vertical stripes."""
    img = np.zeros((h, w, 3), np.uint8)
    stripe = (np.arange(w) // 16) % 2 == 0
    img[:, stripe] = (30, 180, 40)
    img[:, ~stripe] = (240, 220, 30)
    return img


def _scene_c(h=120, w=160):
    """Grey concentric rings."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    v = 128 + 100 * np.sin(r / 5)
    return np.repeat(v[..., None], 3, axis=2).astype(np.uint8)


def _noisy(img, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def _cos(a, b):
    return float((a * b).sum())


@pytest.fixture(scope="module")
def pixel():
    return PixelEncoder()


def test_pixel_shape_unit_norm_and_deterministic(pixel):
    frames = np.stack([_scene_a(), _scene_b(), _scene_c()])
    e = pixel.encode(frames)
    assert e.dtype == torch.float32 and e.shape == (3, pixel.dim)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(e, pixel.encode(frames))


def test_pixel_batching_does_not_change_embeddings():
    frames = np.stack([_noisy(_scene_a(), 4, s) for s in range(7)])
    one = PixelEncoder(batch_size=64).encode(frames)
    small = PixelEncoder(batch_size=2).encode(frames)
    assert torch.allclose(one, small, atol=1e-6)


def test_pixel_same_scene_high_different_scene_low(pixel):
    a = _scene_a()
    variants = {
        "noise": _noisy(a, 6),
        "shift": np.roll(a, (3, 4), axis=(0, 1)),
        "brighter": np.clip(a.astype(np.int16) + 15, 0, 255).astype(np.uint8),
    }
    e = pixel.encode(np.stack([a, *variants.values(), _scene_b(), _scene_c()]))
    for j, name in enumerate(variants, start=1):
        assert _cos(e[0], e[j]) > 0.9, name
    for j in (4, 5):
        assert _cos(e[0], e[j]) < 0.5
    assert _cos(e[4], e[5]) < 0.5


def test_pixel_discriminates_well_below_default_threshold(pixel):
    e = pixel.encode(np.stack([_scene_a(), _scene_b(), _scene_c()]))
    sims = (e @ e.T)[~torch.eye(3, dtype=torch.bool)]
    assert sims.max() < pixel.default_threshold - 0.2


def test_pixel_flat_frames_are_finite(pixel):
    frames = np.stack([np.zeros((60, 80, 3), np.uint8), np.full((60, 80, 3), 255, np.uint8), np.full((60, 80, 3), (10, 200, 30), np.uint8)])
    e = pixel.encode(frames)
    assert torch.isfinite(e).all()
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)


def test_pixel_size_independent(pixel):
    """The same picture at two sizes embeds almost identically (area resize to a fixed square)."""
    from PIL import Image

    a = _scene_a(240, 320)
    small = np.asarray(Image.fromarray(a).resize((160, 120), Image.BILINEAR))
    ea, es = pixel.encode(a[None]), pixel.encode(small[None])
    assert _cos(ea[0], es[0]) > 0.97


def test_pixel_rejects_bad_input(pixel):
    with pytest.raises(ValueError):
        pixel.encode(np.zeros((2, 10, 10), np.uint8))
    with pytest.raises(ValueError):
        pixel.encode(np.zeros((1, 10, 10, 3), np.float32))
    assert pixel.encode(np.zeros((0, 10, 10, 3), np.uint8)).shape == (0, pixel.dim)


def test_encoder_config_validation(tmp_path):
    assert isinstance(build_encoder(EncoderConfig()), PixelEncoder)
    with pytest.raises(ValueError, match="encoder.model is required"):
        EncoderConfig(type="clip")
    bad = tmp_path / "enc.yaml"
    bad.write_text("type: clip\nfeature: cls\n")
    with pytest.raises(ConfigError, match="model is required"):
        load_config(EncoderConfig, bad)
    bad.write_text("type: pixel\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(EncoderConfig, bad)
    bad.write_text("type: clip\nmodel: x\nfeature: mean\n")
    with pytest.raises(ConfigError, match="feature"):
        load_config(EncoderConfig, bad)


# --------------------------------------------------------------------------------------------------
# CLIP wrapper on the tiny random CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from captioner.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tinyclip") / "clip")


@pytest.mark.parametrize("feature", ["cls", "projected"])
def test_clip_encoder_tiny(tiny_clip, feature):
    enc = build_encoder(EncoderConfig(type="clip", model=str(tiny_clip), feature=feature, batch_size=2))
    assert isinstance(enc, ClipEncoder)
    frames = np.stack([_scene_a(), _scene_b(), _scene_c(), _noisy(_scene_a(), 3)])
    e = enc.encode(frames)
    assert e.dtype == torch.float32 and e.shape[0] == 4
    assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    # batch size does not change the result
    e1 = ClipEncoder(str(tiny_clip), feature=feature, batch_size=16).encode(frames)
    assert torch.allclose(e, e1, atol=1e-5)
    d = enc.describe()
    assert d["type"] == "clip" and d["model"] == str(tiny_clip) and d["feature"] == feature
    assert d["dtype"] == "float32" and d["device"] == "cpu"


def test_clip_cls_and_projected_differ(tiny_clip):
    frames = np.stack([_scene_a(), _scene_b()])
    cls = ClipEncoder(str(tiny_clip), feature="cls").encode(frames)
    proj = ClipEncoder(str(tiny_clip), feature="projected").encode(frames)
    assert cls.shape[1] == 32 and proj.shape[1] == 32  # hidden 32, projection 32 in the tiny model
    assert not torch.allclose(cls, proj)


def test_clip_encoder_missing_model(tmp_path):
    with pytest.raises(ConfigError, match="does not exist|cannot load"):
        ClipEncoder(str(tmp_path / "nope"))


def _reference(feats):
    return torch.nn.functional.normalize(feats if isinstance(feats, torch.Tensor) else feats.pooler_output, dim=1)


def test_clip_encoder_full_clip_checkpoint(tmp_path):
    """A full CLIPModel checkpoint (the layout of openai/clip-vit-large-patch14-336): the vision half
    is loaded, and both features equal CLIPModel's own."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16,  # differs from the vision config's default: must be taken from the top level
    )
    torch.manual_seed(0)
    full = CLIPModel(cfg).eval()
    full.save_pretrained(tmp_path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)

    frames = np.stack([_scene_a(), _scene_b(), _scene_c()])
    cls_enc = ClipEncoder(str(tmp_path), feature="cls")
    proj_enc = ClipEncoder(str(tmp_path), feature="projected")
    assert cls_enc.describe()["model_type"] == "clip"
    pv = cls_enc.processor(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref_cls = _reference(full.vision_model(pixel_values=pv).pooler_output)
        ref_proj = _reference(full.get_image_features(pixel_values=pv))
    assert torch.allclose(cls_enc.encode(frames), ref_cls, atol=1e-5)
    out = proj_enc.encode(frames)
    assert out.shape == (3, 16) and torch.allclose(out, ref_proj, atol=1e-5)


def test_clip_encoder_siglip(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1, num_attention_heads=2)).eval()
    model.save_pretrained(tmp_path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    enc = ClipEncoder(str(tmp_path))
    frames = np.stack([_scene_a(), _scene_b()])
    pv = enc.processor(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = _reference(model(pixel_values=pv).pooler_output)
    assert torch.allclose(enc.encode(frames), ref, atol=1e-5)
    assert enc.describe()["feature"] == "pooled"
