"""t2v.families: each family's spec against its diffusers pipeline and independent references, on the
tiny pipelines (t2v.tiny)."""

from __future__ import annotations

import math

import pytest
import torch

from t2v.families import FAMILIES, Components, TimestepConfig, get_family
from t2v.families.cogvideox import rotary_embeddings
from t2v.families.ltx import pack_latents, unpack_latents

PROMPTS = [
    "A cat jumps onto a table, knocks over a glass of water &amp; runs away.",
    "  Two   birds fly above the river\n while the camera pans left.  ",
    " ".join(["The red balloon rolls down the snowy hill as the camera zooms in."] * 30),  # > 226 tokens
]
# a video shape every family accepts: 17 frames (4k+1 and 8k+1), 64 x 64 (multiple of 16 and 32)
VIDEO = (2, 3, 17, 64, 64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_paths(t2v_tiny_models):
    return t2v_tiny_models


@pytest.fixture(scope="module")
def loaded(tiny_paths):
    """family -> (spec, all components loaded through ``tiny://family``, its pipeline)."""
    out = {}
    for name in FAMILIES:
        spec = get_family(name)
        c = spec.load_components(f"tiny://{name}")
        pipe = spec.build_pipeline(c)
        pipe.set_progress_bar_config(disable=True)
        out[name] = (spec, c, pipe)
    return out


def _video(seed: int = 0, shape=VIDEO) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------------------------------
# registry and static facts


def test_registry():
    assert FAMILIES == ("wan", "cogvideox", "ltx")
    assert get_family("WAN").name == "wan"
    with pytest.raises(ValueError, match="unknown model family 'sdxl'; available: wan, cogvideox, ltx"):
        get_family("sdxl")
    ids = {n: get_family(n).default_model_id for n in FAMILIES}
    assert ids == {
        "wan": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "cogvideox": "THUDM/CogVideoX-2b",
        "ltx": "Lightricks/LTX-Video",
    }
    assert "THUDM/CogVideoX-5b" in get_family("cogvideox").known_model_ids
    assert {n: get_family(n).max_text_tokens for n in FAMILIES} == {"wan": 512, "cogvideox": 226, "ltx": 128}


def test_default_timestep_configs():
    wan, cog, ltx = (get_family(n).default_timestep_config() for n in FAMILIES)
    assert (wan.sampling, wan.shift, wan.weighting) == ("sigmoid_shift", 3.0, "none")
    assert (cog.sampling, cog.weighting) == ("uniform", "none")
    assert (ltx.sampling, ltx.shift) == ("sigmoid_shift", None)
    with pytest.raises(ValueError):
        TimestepConfig(sampling="beta")
    with pytest.raises(ValueError):
        TimestepConfig(shfit=2.0)


@pytest.mark.parametrize(
    ("family", "good", "bad", "message"),
    [
        ("wan", (81, 480, 832), (80, 480, 832), r"num_frames must be 4\*k \+ 1.*got 80; e.g. 77 or 81"),
        ("wan", (1, 16, 16), (9, 480, 840), "width must be a positive multiple of 16, got 840"),
        ("cogvideox", (49, 480, 720), (49, 488, 720), "height must be a positive multiple of 16, got 488"),
        ("cogvideox", (9, 32, 32), (0, 32, 32), r"num_frames must be 4\*k \+ 1"),
        ("ltx", (161, 512, 704), (50, 512, 704), r"num_frames must be 8\*k \+ 1.*got 50; e.g. 49 or 57"),
        ("ltx", (9, 32, 64), (9, 48, 64), "height must be a positive multiple of 32, got 48"),
    ],
)
def test_check_shape(family, good, bad, message):
    spec = get_family(family)
    spec.check_shape(*good)
    with pytest.raises(ValueError, match=message):
        spec.check_shape(*bad)


def test_latent_shape():
    assert get_family("wan").latent_shape(81, 480, 832) == (21, 60, 104)
    assert get_family("ltx").latent_shape(161, 512, 704) == (21, 16, 22)


def test_lora_targets_exist_in_each_transformer(loaded):
    for name, (spec, c, _) in loaded.items():
        names = [n for n, _ in c.transformer.named_modules()]
        for target in spec.lora_target_modules:
            hits = [n for n in names if n == target or n.endswith("." + target)]
            assert hits and all(isinstance(c.transformer.get_submodule(h), torch.nn.Linear) for h in hits), (
                name,
                target,
            )


# --------------------------------------------------------------------------------------------------
# loading and pipelines


def test_build_pipeline_class_and_missing_parts(loaded, tiny_paths):
    import diffusers

    for spec, c, pipe in loaded.values():
        assert type(pipe) is getattr(diffusers, spec.pipeline_class_name)
        assert pipe.transformer is c.transformer and pipe.vae is c.vae
    spec = get_family("wan")
    c = spec.load_components(str(tiny_paths["wan"]), text_encoder=False, vae=False)
    assert c.tokenizer is None and c.text_encoder is None and c.vae is None
    assert c.transformer is not None and type(c.scheduler).__name__ == "UniPCMultistepScheduler"
    assert c.vae_config["z_dim"] == 4  # the config is always there
    with pytest.raises(ValueError, match="needs the tokenizer, text_encoder, vae"):
        spec.build_pipeline(c)
    with pytest.raises(ValueError, match="needs the tokenizer, text_encoder, which were not loaded"):
        spec.encode_prompts(c, ["a cat"])
    with pytest.raises(ValueError, match="needs the vae"):
        spec.encode_video(c, _video())


def test_load_components_dtype_and_frozen_parts(tiny_paths):
    spec = get_family("cogvideox")
    c = spec.load_components(str(tiny_paths["cogvideox"]), dtype=torch.bfloat16, vae_dtype=torch.float32)
    assert c.transformer.dtype == torch.bfloat16 and c.text_encoder.dtype == torch.bfloat16
    assert c.vae.dtype == torch.float32
    assert not any(p.requires_grad for p in c.text_encoder.parameters())
    assert not any(p.requires_grad for p in c.vae.parameters())
    assert type(c.scheduler).__name__ == "CogVideoXDDIMScheduler"


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_through_built_pipeline(loaded, family):
    _, _, pipe = loaded[family]
    frames = pipe(
        prompt="a dog",
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (1, 9, 32, 32, 3)


# --------------------------------------------------------------------------------------------------
# prompts and latents


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_prompts_matches_pipeline(loaded, family):
    spec, c, pipe = loaded[family]
    cond = spec.encode_prompts(c, PROMPTS)
    ref = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=spec.max_text_tokens)
    assert cond["prompt_embeds"].shape == (3, spec.max_text_tokens, 32)
    assert torch.equal(cond["prompt_embeds"], ref[0])
    if family == "ltx":
        assert set(cond) == {"prompt_embeds", "prompt_attention_mask"}
        assert torch.equal(cond["prompt_attention_mask"], ref[1])
        assert cond["prompt_attention_mask"].dtype == torch.bool
    else:
        assert set(cond) == {"prompt_embeds"}
    if family == "wan":  # padding positions are zero, real ones are not
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        n = len(c.tokenizer(prompt_clean(PROMPTS[0])).input_ids)
        assert cond["prompt_embeds"][0, n:].abs().sum() == 0 and cond["prompt_embeds"][0, : n - 1].abs().sum() > 0


def _reference_latents(family: str, c: Components, z: torch.Tensor) -> torch.Tensor:
    """The family's normalisation written out from the VAE and its config."""
    vae = c.vae
    if family == "wan":
        ch = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, ch, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, ch, 1, 1, 1)
        return (z - mean) / std
    if family == "cogvideox":
        return (z * vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
    mean = vae.latents_mean.view(1, -1, 1, 1, 1)
    std = vae.latents_std.view(1, -1, 1, 1, 1)
    return (z - mean) * vae.config.scaling_factor / std


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_video_and_latents(loaded, family):
    spec, c, pipe = loaded[family]
    video = _video(1)
    dist = spec.encode_video(c, video)
    with torch.no_grad():
        posterior = c.vae.encode(video).latent_dist
    assert torch.equal(dist["mean"], posterior.mean) and torch.equal(dist["logvar"], posterior.logvar)
    lat_f, lat_h, lat_w = spec.latent_shape(*VIDEO[2:])
    assert dist["mean"].shape[2:] == (lat_f, lat_h, lat_w)

    mean_latents = spec.latents_from_dist(c, dist, sample=False)
    torch.testing.assert_close(mean_latents, _reference_latents(family, c, posterior.mean), rtol=1e-6, atol=1e-6)
    if family == "wan":  # WanPipeline's decode step undoes it
        ch = c.vae.config.z_dim
        inv_std = 1.0 / torch.tensor(c.vae.config.latents_std).view(1, ch, 1, 1, 1)
        mean = torch.tensor(c.vae.config.latents_mean).view(1, ch, 1, 1, 1)
        torch.testing.assert_close(mean_latents / inv_std + mean, posterior.mean, rtol=1e-5, atol=1e-5)
    if family == "ltx":  # LTXPipeline's own normalisation
        ref = pipe._normalize_latents(
            posterior.mean, c.vae.latents_mean, c.vae.latents_std, c.vae.config.scaling_factor
        )
        torch.testing.assert_close(mean_latents, ref, rtol=1e-6, atol=1e-6)

    sampled = spec.latents_from_dist(c, dist, generator=torch.Generator().manual_seed(5))
    ref_sample = posterior.sample(generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sampled, _reference_latents(family, c, ref_sample), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(sampled, mean_latents)


def test_encode_video_rejects_bad_input(loaded):
    spec, c, _ = loaded["wan"]
    with pytest.raises(ValueError, match="num_frames must be 4"):
        spec.encode_video(c, _video(0, (1, 3, 8, 32, 32)))
    with pytest.raises(ValueError, match=r"expected a video of shape \(B, 3, F, H, W\)"):
        spec.encode_video(c, torch.zeros(3, 9, 32, 32))


def test_ltx_latent_statistics_without_vae(loaded, tiny_paths):
    spec, full, _ = loaded["ltx"]
    c = spec.load_components(str(tiny_paths["ltx"]), text_encoder=False, vae=False, transformer=False)
    assert c.vae is None
    assert torch.equal(c.extras["latents_mean"], full.vae.latents_mean)
    assert torch.equal(c.extras["latents_std"], full.vae.latents_std)
    assert not torch.all(c.extras["latents_std"] == 1)  # the tiny VAE has non-trivial statistics
    assert spec.vae_ratios(c) == (8, 32)


def test_ltx_packing_matches_pipeline():
    from diffusers import LTXPipeline

    x = torch.randn(2, 8, 3, 4, 6)
    for p, pt in ((1, 1), (2, 1), (2, 3)):
        packed = pack_latents(x, p, pt)
        assert torch.equal(packed, LTXPipeline._pack_latents(x, p, pt))
        grid = (3 // pt, 4 // p, 6 // p)
        assert torch.equal(unpack_latents(packed, grid, p, pt), x)
        assert torch.equal(unpack_latents(packed, grid, p, pt), LTXPipeline._unpack_latents(packed, *grid, p, pt))


# --------------------------------------------------------------------------------------------------
# training inputs and loss


def _latents_cond(loaded, family):
    spec, c, _ = loaded[family]
    dist = spec.encode_video(c, _video(2))
    latents = spec.latents_from_dist(c, dist, sample=False)
    return spec, c, latents, spec.encode_prompts(c, PROMPTS[:2])


def _reference_sigmas(cfg: TimestepConfig, batch: int, g: torch.Generator, shift: float) -> torch.Tensor:
    if cfg.sampling == "uniform":
        return torch.rand(batch, generator=g)
    u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(batch, generator=g))
    return u if cfg.sampling == "logit_normal" else shift * u / (1 + (shift - 1) * u)


@pytest.mark.parametrize("family", ["wan", "ltx"])
@pytest.mark.parametrize(
    "cfg",
    [
        None,
        TimestepConfig(sampling="uniform"),
        TimestepConfig(sampling="logit_normal", logit_mean=0.5, logit_std=0.8, weighting="cosmap"),
        TimestepConfig(sampling="sigmoid_shift", shift=5.0, weighting="sigma_sqrt"),
    ],
)
def test_flow_matching_inputs_and_loss(loaded, family, cfg):
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    spec, c, latents, cond = _latents_cond(loaded, family)
    inputs = spec.training_step_inputs(c, latents, cond, generator=torch.Generator().manual_seed(7), timestep_cfg=cfg)

    eff = cfg or spec.default_timestep_config()
    batch = latents.shape[0]
    if eff.shift is not None:
        shift = eff.shift
    elif family == "wan":
        shift = 3.0
    else:  # LTX: the scheduler's resolution-dependent shift, as LTXPipeline computes mu
        sc = c.scheduler.config
        tokens = math.prod(latents.shape[2:])
        mu = calculate_shift(
            tokens, sc["base_image_seq_len"], sc["max_image_seq_len"], sc["base_shift"], sc["max_shift"]
        )
        shift = math.exp(mu)
        assert inputs["shift"] == pytest.approx(shift, rel=1e-9)
    g = torch.Generator().manual_seed(7)
    sigmas = _reference_sigmas(eff, batch, g, shift)
    noise = torch.randn(latents.shape, generator=g)
    s = sigmas.view(batch, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    target = noise - latents
    if family == "ltx":
        noisy, target = pack_latents(noisy), pack_latents(target)
        assert inputs["latent_grid"] == tuple(latents.shape[2:]) and inputs["frame_rate"] == 25.0
    torch.testing.assert_close(inputs["sigmas"], sigmas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(inputs["timesteps"], sigmas * 1000, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(inputs["noisy"], noisy, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(inputs["target"], target, rtol=1e-6, atol=1e-6)

    if eff.weighting == "none":
        weights = torch.ones(batch)
    elif eff.weighting == "sigma_sqrt":
        weights = sigmas**-2
    else:
        weights = 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    torch.testing.assert_close(inputs["weights"], weights, rtol=1e-5, atol=1e-6)

    pred = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    expected = torch.stack([weights[i] * ((pred[i] - target[i]) ** 2).mean() for i in range(batch)]).mean()
    torch.testing.assert_close(spec.loss(pred, inputs), expected, rtol=1e-5, atol=1e-6)


def test_flow_matching_fixed_noise_and_sigmas(loaded):
    spec, c, latents, cond = _latents_cond(loaded, "wan")
    noise = torch.randn(latents.shape)
    inputs = spec.training_step_inputs(c, latents, cond, noise=noise, sigmas=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(inputs["noisy"][0], latents[0])
    torch.testing.assert_close(inputs["noisy"][1], noise[1])
    assert inputs["timesteps"].tolist() == [0.0, 1000.0]


@pytest.mark.parametrize("cfg", [None, TimestepConfig(sampling="logit_normal", logit_mean=-0.3, logit_std=1.2)])
def test_cogvideox_inputs_and_loss(loaded, cfg):
    spec, c, latents, cond = _latents_cond(loaded, "cogvideox")
    batch = latents.shape[0]
    assert latents.shape[1:3] == (5, 4)  # (B, F, C, H, W)
    inputs = spec.training_step_inputs(c, latents, cond, generator=torch.Generator().manual_seed(11), timestep_cfg=cfg)

    g = torch.Generator().manual_seed(11)
    if cfg is None:
        timesteps = torch.randint(0, 1000, (batch,), generator=g)
    else:
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(batch, generator=g))
        timesteps = (u * 1000).long().clamp(0, 999)
    noise = torch.randn(latents.shape, generator=g)
    assert torch.equal(inputs["timesteps"], timesteps)
    # the schedule written out: scaled-linear betas, SNR shift, zero terminal SNR
    sc = c.scheduler.config
    betas = torch.linspace(sc.beta_start**0.5, sc.beta_end**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    ac = ac / (sc.snr_shift_scale + (1 - sc.snr_shift_scale) * ac)
    root = ac.sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    ac = (root**2).float()
    assert ac[-1] == 0
    a = ac[timesteps].view(batch, 1, 1, 1, 1)
    torch.testing.assert_close(inputs["alphas_cumprod"], ac[timesteps], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inputs["noisy"], a.sqrt() * latents + (1 - a).sqrt() * noise, rtol=1e-5, atol=1e-5)
    velocity = a.sqrt() * noise - (1 - a).sqrt() * latents
    torch.testing.assert_close(inputs["velocity"], velocity, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inputs["weights"], 1 / (1 - ac[timesteps]), rtol=1e-5, atol=1e-5)

    pred = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    x0_pred = a.sqrt() * inputs["noisy"] - (1 - a).sqrt() * pred
    w = 1 / (1 - a.flatten())
    expected = torch.stack([w[i] * ((x0_pred[i] - latents[i]) ** 2).mean() for i in range(batch)]).mean()
    loss = spec.loss(pred, inputs)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # the authors' weighted x0 loss is the plain v-prediction MSE
    torch.testing.assert_close(loss, ((pred - velocity) ** 2).mean(), rtol=1e-3, atol=1e-5)
    # and the scheduler's own conversion gives the same x0 prediction
    torch.testing.assert_close(
        c.scheduler.get_velocity(pred, inputs["noisy"], timesteps), x0_pred, rtol=1e-5, atol=1e-5
    )


def test_cogvideox_rejects_flow_options(loaded):
    spec, c, latents, cond = _latents_cond(loaded, "cogvideox")
    for cfg in (TimestepConfig(sampling="sigmoid_shift"), TimestepConfig(weighting="cosmap")):
        with pytest.raises(ValueError, match="flow-matching"):
            spec.training_step_inputs(c, latents, cond, timestep_cfg=cfg)


# --------------------------------------------------------------------------------------------------
# prediction


def test_predict_matches_direct_transformer_calls(loaded):
    g = torch.Generator().manual_seed(4)
    # Wan: plain call
    spec, c, latents, cond = _latents_cond(loaded, "wan")
    inputs = spec.training_step_inputs(c, latents, cond, generator=g)
    with torch.no_grad():
        pred = spec.predict(c, inputs, cond)
        ref = c.transformer(
            hidden_states=inputs["noisy"], timestep=inputs["timesteps"], encoder_hidden_states=cond["prompt_embeds"]
        ).sample
    assert pred.shape == latents.shape and torch.equal(pred, ref)

    # CogVideoX: rotary tables as CogVideoXPipeline makes them for the pixel size
    spec, c, latents, cond = _latents_cond(loaded, "cogvideox")
    pipe = loaded["cogvideox"][2]
    inputs = spec.training_step_inputs(c, latents, cond, generator=g)
    frames = latents.shape[1]
    ref_rope = pipe._prepare_rotary_positional_embeddings(VIDEO[3], VIDEO[4], frames, torch.device("cpu"))
    ours = rotary_embeddings(c.transformer.config, frames, latents.shape[3], latents.shape[4], "cpu")
    assert all(torch.equal(a, b) for a, b in zip(ours, ref_rope))
    with torch.no_grad():
        pred = spec.predict(c, inputs, cond)
        ref = c.transformer(
            hidden_states=inputs["noisy"],
            encoder_hidden_states=cond["prompt_embeds"],
            timestep=inputs["timesteps"],
            image_rotary_emb=ref_rope,
        ).sample
    assert pred.shape == latents.shape and torch.equal(pred, ref)

    # LTX: packed tokens, mask, grid and rope scale as LTXPipeline passes them
    spec, c, latents, cond = _latents_cond(loaded, "ltx")
    inputs = spec.training_step_inputs(c, latents, cond, generator=g, frame_rate=24)
    f, h, w = latents.shape[2:]
    with torch.no_grad():
        pred = spec.predict(c, inputs, cond)
        ref = c.transformer(
            hidden_states=pack_latents(unpack_latents(inputs["noisy"], (f, h, w))),
            encoder_hidden_states=cond["prompt_embeds"],
            timestep=inputs["timesteps"],
            encoder_attention_mask=cond["prompt_attention_mask"],
            num_frames=f,
            height=h,
            width=w,
            rope_interpolation_scale=(8 / 24, 32, 32),
        ).sample
    assert pred.shape == (latents.shape[0], f * h * w, latents.shape[1]) and torch.equal(pred, ref)


def test_cogvideox_predict_other_transformer_layouts(loaded):
    from dataclasses import replace

    from diffusers import CogVideoXTransformer3DModel

    spec, c, latents, cond = _latents_cond(loaded, "cogvideox")
    inputs = spec.training_step_inputs(c, latents, cond, generator=torch.Generator().manual_seed(0))
    common = {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 4,
        "out_channels": 4,
        "time_embed_dim": 16,
        "text_embed_dim": 32,
        "num_layers": 1,
        "sample_width": 8,
        "sample_height": 8,
        "sample_frames": 17,
    }
    # CogVideoX-2b style: sincos positions inside the transformer, no rotary tables
    plain = replace(c, transformer=CogVideoXTransformer3DModel(**common, use_rotary_positional_embeddings=False))
    with torch.no_grad():
        assert spec.predict(plain, inputs, cond).shape == latents.shape
    # CogVideoX 1.5 style: two latent frames per patch; 5 latent frames cannot be patched
    paired = replace(
        c, transformer=CogVideoXTransformer3DModel(**common, patch_size_t=2, use_rotary_positional_embeddings=True)
    )
    with pytest.raises(ValueError, match="patches 2 latent frames together; got 5"):
        spec.predict(paired, inputs, cond)


# --------------------------------------------------------------------------------------------------
# overfitting one batch


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_transformer_overfits_one_batch(loaded, tiny_paths, family):
    spec, _, latents, cond = _latents_cond(loaded, family)
    c = spec.load_components(str(tiny_paths[family]), text_encoder=False, vae=False)  # a fresh transformer
    model = c.transformer.train()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=g)
    fixed = {"sigmas": torch.tensor([0.3, 0.7])} if family != "cogvideox" else {"timesteps": torch.tensor([250, 750])}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        inputs = spec.training_step_inputs(c, latents, cond, noise=noise, **fixed)
        loss = spec.loss(spec.predict(c, inputs, cond), inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_cogvideox_pipeline_with_fp32_vae_and_bf16_transformer(tiny_paths):
    spec = get_family("cogvideox")
    c = spec.load_components(str(tiny_paths["cogvideox"]), dtype=torch.bfloat16, vae_dtype=torch.float32)
    pipe = spec.build_pipeline(c)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(prompt="a dog", num_frames=9, height=32, width=32, num_inference_steps=1, output_type="np").frames
    assert frames.shape == (1, 9, 32, 32, 3)
    spec.build_pipeline(c)  # the cast is installed once
    assert len(c.vae.decoder._forward_pre_hooks) == 1
