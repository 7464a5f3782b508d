"""CogVideoX text-to-video (``THUDM/CogVideoX-2b``, ``THUDM/CogVideoX-5b``).

Where the numbers come from:

* Objective: DDPM with v-prediction on the checkpoint's own noise schedule (the scheduler config:
  scaled-linear betas 0.00085..0.012, 1000 steps, zero terminal SNR, ``snr_shift_scale`` 3.0 for 2b and
  1.0 for 5b), as in the CogVideoX paper and its SAT training code. Noise is added with the scheduler's
  ``add_noise``; timesteps are uniform over ``0..num_train_timesteps-1``.
* Loss: the authors' recipe (SAT ``VideoDiffusionLoss``, also diffusers' CogVideoX LoRA script): the
  v-prediction is turned into an x0 prediction with the scheduler's ``get_velocity(pred, x_t, t)``
  (= sqrt(a) x_t - sqrt(1-a) v), compared with the clean latents, and weighted per sample by
  1 / (1 - alphas_cumprod[t]). Algebraically this is the plain MSE on v; it is computed in the
  authors' form. The flow-matching ``weighting`` and ``sigmoid_shift`` options do not apply.
* Latents: ``AutoencoderKLCogVideoX`` (4x temporal, 8x spatial, 16 channels) times the VAE config's
  ``scaling_factor`` (1.15258426 for 2b, 0.7 for 5b), then permuted to the (B, F, C, H, W) layout the
  transformer takes, the inverse of ``CogVideoXPipeline.decode_latents``.
* Text: T5-XXL, 226 tokens (the transformer's ``max_text_seq_length``), no attention mask, as the pipeline.
* Positions: 3D rotary embeddings when the transformer config says so (5b), computed for each latent
  size as ``CogVideoXPipeline`` does; learned/sincos positions (2b) live inside the transformer.
* Shapes: frames 4k+1; height and width multiples of 16 (VAE 8 x patch 2). CogVideoX 1.5
  (``patch_size_t`` 2) also needs an even number of latent frames, checked in :meth:`predict`.
* LoRA: ``to_q``/``to_k``/``to_v``/``to_out.0`` (diffusers' CogVideoX LoRA training script default).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from t2v.families.base import Components, ModelSpec, TimestepConfig


def _crop_region(grid: tuple[int, int], base_width: int, base_height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Fit a (h, w) token grid inside the base (height, width) grid keeping its aspect ratio, centred:
    returns ((top, left), (bottom, right)) in base-grid units."""
    h, w = grid
    if h / w > base_height / base_width:  # taller than the base: full height
        fit_h, fit_w = base_height, round(base_height / h * w)
    else:
        fit_h, fit_w = round(base_width / w * h), base_width
    top = round((base_height - fit_h) / 2.0)
    left = round((base_width - fit_w) / 2.0)
    return (top, left), (top + fit_h, left + fit_w)


def rotary_embeddings(
    transformer_config, frames: int, height: int, width: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (cos, sin) 3D rotary tables for latents of ``frames`` x ``height`` x ``width`` (latent units)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p = transformer_config.patch_size
    p_t = transformer_config.patch_size_t
    grid = (height // p, width // p)
    base_h = transformer_config.sample_height // p
    base_w = transformer_config.sample_width // p
    if p_t is None:
        return get_3d_rotary_pos_embed(
            embed_dim=transformer_config.attention_head_dim,
            crops_coords=_crop_region(grid, base_w, base_h),
            grid_size=grid,
            temporal_size=frames,
            device=device,
        )
    return get_3d_rotary_pos_embed(
        embed_dim=transformer_config.attention_head_dim,
        crops_coords=None,
        grid_size=grid,
        temporal_size=(frames + p_t - 1) // p_t,
        grid_type="slice",
        max_size=(base_h, base_w),
        device=device,
    )


def _cast_to_module_dtype(module, args, kwargs):
    dtype = next(module.parameters()).dtype
    args = tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    return args, kwargs


def _cast_decoder_inputs(vae) -> None:
    """Make the VAE decoder take latents of any float dtype.

    ``CogVideoXPipeline.decode_latents`` hands the VAE latents in the transformer's dtype (unlike the Wan
    and LTX pipelines, which cast them), so a bf16 transformer with an fp32 VAE fails to decode. A
    forward pre-hook on the decoder (and ``post_quant_conv``, where there is one) casts them; installed once.
    """
    if getattr(vae, "_t2v_casts_latents", False):
        return
    for part in (vae.decoder, getattr(vae, "post_quant_conv", None)):
        if part is not None:
            part.register_forward_pre_hook(_cast_to_module_dtype, with_kwargs=True)
    vae._t2v_casts_latents = True


class CogVideoXSpec(ModelSpec):
    name = "cogvideox"
    default_model_id = "THUDM/CogVideoX-2b"
    known_model_ids = ("THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b")
    max_text_tokens = 226
    temporal_ratio = 4
    spatial_ratio = 8
    spatial_multiple = 16
    lora_target_modules: ClassVar[list[str]] = ["to_q", "to_k", "to_v", "to_out.0"]
    pipeline_class_name = "CogVideoXPipeline"
    # CogVideoXPipeline.__call__ (50 steps, guidance 6; size and frames from the transformer config:
    # sample_height 60 x 8 = 480, sample_width 90 x 8 = 720, sample_frames 49) and its example (fps=8)
    generation_defaults: ClassVar[dict[str, Any]] = {
        "num_frames": 49, "height": 480, "width": 720, "num_inference_steps": 50, "guidance_scale": 6.0, "fps": 8.0}

    def after_pipeline_load(self, pipe: Any, dtype: torch.dtype, vae_dtype: torch.dtype) -> None:
        if vae_dtype != dtype:
            _cast_decoder_inputs(pipe.vae)  # the pipeline hands the VAE latents in the transformer's dtype

    def classes(self) -> dict[str, Any]:
        from diffusers import (
            AutoencoderKLCogVideoX,
            CogVideoXDDIMScheduler,
            CogVideoXDPMScheduler,
            CogVideoXTransformer3DModel,
        )
        from transformers import T5EncoderModel, T5Tokenizer

        return {
            "tokenizer": T5Tokenizer,
            "text_encoder": T5EncoderModel,
            "vae": AutoencoderKLCogVideoX,
            "transformer": CogVideoXTransformer3DModel,
            "scheduler": CogVideoXDDIMScheduler,
            "schedulers": {
                "CogVideoXDDIMScheduler": CogVideoXDDIMScheduler,
                "CogVideoXDPMScheduler": CogVideoXDPMScheduler,
            },
        }

    def build_pipeline(self, c: Components):
        c.require("vae")
        _cast_decoder_inputs(c.vae)  # the pipeline does not cast latents to the VAE's dtype
        return super().build_pipeline(c)

    # ------------------------------------------------------------------------------------------

    def encode_prompts(self, c: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        c.require("tokenizer", "text_encoder")
        tok = c.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_text_tokens,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            hidden = c.text_encoder(tok.input_ids.to(c.text_encoder.device))[0]
        return {"prompt_embeds": hidden}

    def latents_from_dist(
        self, c: Components, dist: dict, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        z = self.sample_dist(dist, generator, sample)
        scaled = (z.float() * float(c.vae_config["scaling_factor"])).to(z.dtype)
        return scaled.permute(0, 2, 1, 3, 4).contiguous()  # (B, C, F, H, W) -> (B, F, C, H, W)

    # ------------------------------------------------------------------------------------------

    def default_timestep_config(self) -> TimestepConfig:
        return TimestepConfig(sampling="uniform")

    def training_step_inputs(
        self,
        c: Components,
        latents: torch.Tensor,
        cond: dict[str, torch.Tensor],
        *,
        generator: torch.Generator | None = None,
        timestep_cfg: TimestepConfig | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """DDPM v-prediction on (B, F, C, H, W) latents; ``timesteps`` (B,) ints and ``noise`` may be fixed."""
        from diffusers.utils.torch_utils import randn_tensor

        cfg = timestep_cfg or self.default_timestep_config()
        if cfg.sampling == "sigmoid_shift" or cfg.weighting != "none":
            raise ValueError(
                "cogvideox: timestep sampling 'sigmoid_shift' and loss weightings are for flow-matching models; "
                "CogVideoX trains with DDPM timesteps (sampling: uniform or logit_normal, weighting: none)"
            )
        sched = c.scheduler
        num_t = int(sched.config.num_train_timesteps)
        batch = latents.shape[0]
        if timesteps is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            if cfg.sampling == "uniform":
                timesteps = torch.randint(0, num_t, (batch,), generator=generator, device=gen_device)
            else:
                z = torch.randn(batch, generator=generator, device=gen_device, dtype=torch.float32)
                u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * z)
                timesteps = (u * num_t).long().clamp(0, num_t - 1)
        timesteps = torch.as_tensor(timesteps, device=latents.device).long().reshape(batch)
        if noise is None:
            noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise.to(device=latents.device, dtype=latents.dtype)
        noisy = sched.add_noise(latents, noise, timesteps)
        alphas = sched.alphas_cumprod.to(device=latents.device, dtype=torch.float32)[timesteps]
        return {
            "noisy": noisy,
            "timesteps": timesteps,
            "noise": noise,
            "alphas_cumprod": alphas,
            "target": latents.float(),  # the loss compares x0 predictions (see loss)
            "velocity": sched.get_velocity(latents.float(), noise.float(), timesteps),
            "weights": 1.0 / (1.0 - alphas),
        }

    def predict(self, c: Components, inputs: dict[str, Any], cond: dict[str, torch.Tensor]) -> torch.Tensor:
        c.require("transformer")
        model = c.transformer
        config = model.config
        noisy = inputs["noisy"]
        frames, height, width = noisy.shape[1], noisy.shape[3], noisy.shape[4]
        if config.patch_size_t is not None and frames % config.patch_size_t != 0:
            raise ValueError(
                f"cogvideox: this transformer patches {config.patch_size_t} latent frames together; got {frames} "
                f"latent frames (use num_frames with an even (num_frames - 1) / 4 + 1)"
            )
        rotary = (
            rotary_embeddings(config, frames, height, width, model.device)
            if config.use_rotary_positional_embeddings
            else None
        )
        return model(
            hidden_states=noisy.to(device=model.device, dtype=model.dtype),
            encoder_hidden_states=cond["prompt_embeds"].to(device=model.device, dtype=model.dtype),
            timestep=inputs["timesteps"].to(model.device),
            image_rotary_emb=rotary,
            return_dict=False,
        )[0]

    def loss(self, pred: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """x0 = sqrt(a) x_t - sqrt(1 - a) v_pred; mean over each sample of (x0 - latents)^2 / (1 - a); batch mean."""
        a = inputs["alphas_cumprod"].to(device=pred.device, dtype=torch.float32)
        a = a.view(-1, *([1] * (pred.ndim - 1)))
        x0_pred = a.sqrt() * inputs["noisy"].float().to(pred.device) - (1.0 - a).sqrt() * pred.float()
        err = (x0_pred - inputs["target"].float().to(pred.device)).pow(2).flatten(1).mean(dim=1)
        return (inputs["weights"].to(device=pred.device, dtype=torch.float32) * err).mean()
