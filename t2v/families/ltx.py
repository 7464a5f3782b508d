"""LTX-Video text-to-video (``Lightricks/LTX-Video``, the 0.9.x 2B model in diffusers' layout).

Where the numbers come from:

* Objective: rectified flow with the velocity target, x_t = (1 - sigma) x0 + sigma * noise,
  v = noise - x0 (the LTX-Video paper), ``timestep = sigma * 1000``.
* Noise levels: the paper's and Lightricks' LTX-Video-Trainer's "shifted logit-normal": a logit-normal
  sample (mean 0, std 1) shifted by a factor that grows with the number of latent tokens. The factor
  is the one ``LTXPipeline`` uses at inference: exp(mu), mu linear in the token count from
  ``base_shift`` 0.95 at ``base_image_seq_len`` 1024 tokens to ``max_shift`` 2.05 at 4096 tokens (the
  checkpoint's scheduler config). ``sigmoid_shift`` with shift exp(mu) is exactly sigmoid(N(mu, 1)),
  i.e. the shifted logit-normal. A fixed ``shift`` in the config overrides it. No loss weighting.
* Latents: ``AutoencoderKLLTXVideo`` (8x temporal, 32x spatial, 128 channels), normalised per channel with
  the VAE's ``latents_mean``/``latents_std`` buffers and ``scaling_factor``:
  z' = (z - mean) * scaling_factor / std (``LTXPipeline._normalize_latents``). The buffers are weights, not
  config: without the VAE loaded they are read once from its checkpoint (``Components.extras``).
* Layout: training inputs are packed into tokens as ``LTXPipeline._pack_latents`` does (B, F*H*W, C for
  the patch-1 transformer); ``latents_from_dist`` returns the normalised (B, C, F, H, W) latents, because
  packing loses the grid size the positions need; :meth:`training_step_inputs` packs and records it.
* Positions: ``rope_interpolation_scale = (temporal_ratio / frame_rate, spatial_ratio, spatial_ratio)``
  with frame rate 25 unless given (``LTXPipeline``'s default).
* Text: T5-XXL, 128 tokens, with the attention mask passed to the transformer (not to the encoder),
  as ``LTXPipeline`` does.
* Shapes: frames 8k+1; height and width multiples of 32.
* LoRA: ``to_q``/``to_k``/``to_v``/``to_out.0`` (finetrainers' and LTX-Video-Trainer's defaults).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from t2v.families.base import (
    Components,
    ModelSpec,
    TimestepConfig,
    flow_matching_inputs,
)


def pack_latents(latents: torch.Tensor, patch: int = 1, patch_t: int = 1) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, F/pt * H/p * W/p, C*pt*p*p): tokens in (frame, row, column) order, each
    token's features in (channel, pt, p, p) order, as the LTX transformer takes them."""
    b, ch, f, h, w = latents.shape
    x = latents.reshape(b, ch, f // patch_t, patch_t, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # B, F', H', W', C, pt, p, p
    return x.reshape(b, (f // patch_t) * (h // patch) * (w // patch), ch * patch_t * patch * patch)


def unpack_latents(tokens: torch.Tensor, grid: tuple[int, int, int], patch: int = 1, patch_t: int = 1) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for a token grid ``(F', H', W')``."""
    b = tokens.shape[0]
    f, h, w = grid
    x = tokens.reshape(b, f, h, w, -1, patch_t, patch, patch)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # B, C, F', pt, H', p, W', p
    return x.reshape(b, x.shape[1], f * patch_t, h * patch, w * patch)


class LTXSpec(ModelSpec):
    name = "ltx"
    default_model_id = "Lightricks/LTX-Video"
    known_model_ids = ("Lightricks/LTX-Video",)
    max_text_tokens = 128
    temporal_ratio = 8
    spatial_ratio = 32
    spatial_multiple = 32
    lora_target_modules: ClassVar[list[str]] = ["to_q", "to_k", "to_v", "to_out.0"]
    pipeline_class_name = "LTXPipeline"
    # LTXPipeline's docstring example (width 704, height 480, 161 frames, 50 steps, fps=24) and
    # __call__ (guidance 3), in the installed diffusers
    generation_defaults: ClassVar[dict[str, Any]] = {
        "num_frames": 161, "height": 480, "width": 704, "num_inference_steps": 50, "guidance_scale": 3.0, "fps": 24.0}

    def __init__(self, frame_rate: float = 25.0):
        self.frame_rate = float(frame_rate)

    def pipeline_call_kwargs(self, settings: dict[str, Any]) -> dict[str, Any]:
        # LTXPipeline scales its rotary positions by temporal_compression / frame_rate: the model is
        # told the frame rate the video is written at (as the trainer's validation does)
        return {"frame_rate": settings["fps"]}

    def use_data_frame_rate(self, fps: float | None) -> None:
        if fps:
            self.frame_rate = float(fps)  # the positions of the training videos, as at generation

    def comfy_module_name(self, module: str) -> str:
        return module  # ComfyUI's LTX transformer keeps the diffusers module names

    def classes(self) -> dict[str, Any]:
        from diffusers import (
            AutoencoderKLLTXVideo,
            FlowMatchEulerDiscreteScheduler,
            LTXVideoTransformer3DModel,
        )
        from transformers import T5EncoderModel, T5TokenizerFast

        return {
            "tokenizer": T5TokenizerFast,
            "text_encoder": T5EncoderModel,
            "vae": AutoencoderKLLTXVideo,
            "transformer": LTXVideoTransformer3DModel,
            "scheduler": FlowMatchEulerDiscreteScheduler,
            "schedulers": {"FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler},
        }

    def _finish_loading(self, c: Components, path: str, kw: dict) -> None:
        vae = c.vae
        if vae is None:  # the statistics are buffers in the VAE's weights: read them once
            from diffusers import AutoencoderKLLTXVideo

            vae = AutoencoderKLLTXVideo.from_pretrained(path, subfolder="vae", **kw)
        c.extras["latents_mean"] = vae.latents_mean.detach().to("cpu", torch.float32).clone()
        c.extras["latents_std"] = vae.latents_std.detach().to("cpu", torch.float32).clone()

    # ------------------------------------------------------------------------------------------
    # VAE geometry from its config (so it is known without the VAE loaded)

    def vae_ratios(self, c: Components) -> tuple[int, int]:
        """(temporal, spatial) compression of the checkpoint's VAE."""
        cfg = c.vae_config
        levels = sum(bool(s) for s in cfg.get("spatio_temporal_scaling", (True, True, True, False)))
        spatial = cfg.get("spatial_compression_ratio") or cfg.get("patch_size", 4) * 2**levels
        temporal = cfg.get("temporal_compression_ratio") or cfg.get("patch_size_t", 1) * 2**levels
        return int(temporal), int(spatial)

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
        device = c.text_encoder.device
        with torch.no_grad():
            hidden = c.text_encoder(tok.input_ids.to(device))[0]
        return {"prompt_embeds": hidden, "prompt_attention_mask": tok.attention_mask.bool().to(device)}

    def latents_from_dist(
        self, c: Components, dist: dict, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Normalised latents (B, C, F, H, W); packing happens in :meth:`training_step_inputs`."""
        z = self.sample_dist(dist, generator, sample)
        channels = z.shape[1]
        mean = c.extras["latents_mean"].to(z.device).view(1, channels, 1, 1, 1)
        std = c.extras["latents_std"].to(z.device).view(1, channels, 1, 1, 1)
        scale = float(c.vae_config.get("scaling_factor", 1.0))
        return ((z.float() - mean) * scale / std).to(z.dtype)

    # ------------------------------------------------------------------------------------------

    def default_timestep_config(self) -> TimestepConfig:
        return TimestepConfig(sampling="sigmoid_shift", logit_mean=0.0, logit_std=1.0, shift=None)

    def token_shift(self, c: Components, num_tokens: int) -> float:
        """exp(mu): the scheduler's resolution-dependent shift for ``num_tokens`` latent tokens."""
        cfg = c.scheduler.config
        base_len = cfg.get("base_image_seq_len", 256)
        max_len = cfg.get("max_image_seq_len", 4096)
        base_shift = cfg.get("base_shift", 0.5)
        max_shift = cfg.get("max_shift", 1.15)
        slope = (max_shift - base_shift) / (max_len - base_len)
        mu = base_shift + slope * (num_tokens - base_len)
        return math.exp(mu)

    def training_step_inputs(
        self,
        c: Components,
        latents: torch.Tensor,
        cond: dict[str, torch.Tensor],
        *,
        generator: torch.Generator | None = None,
        timestep_cfg: TimestepConfig | None = None,
        noise: torch.Tensor | None = None,
        sigmas: torch.Tensor | None = None,
        frame_rate: float | None = None,
    ) -> dict[str, Any]:
        """Flow matching on normalised (B, C, F, H, W) latents; the returned ``noisy``, ``noise`` and
        ``target`` are packed tokens. ``noise`` (5D) and ``sigmas`` (B,) may be fixed."""
        if latents.ndim != 5:
            raise ValueError(
                f"ltx: expected latents (B, C, F, H, W) from latents_from_dist, got {tuple(latents.shape)}"
            )
        cfg = timestep_cfg or self.default_timestep_config()
        p, pt = self._patch(c)
        _, _, f, h, w = latents.shape
        grid = (f // pt, h // p, w // p)
        shift = cfg.shift if cfg.shift is not None else self.token_shift(c, grid[0] * grid[1] * grid[2])
        out = flow_matching_inputs(
            latents,
            cfg=cfg,
            shift=shift,
            num_train_timesteps=int(c.scheduler.config.num_train_timesteps),
            generator=generator,
            noise=noise,
            sigmas=sigmas,
        )
        for key in ("noisy", "noise", "target"):
            out[key] = pack_latents(out[key], p, pt)
        out["latent_grid"] = grid
        out["frame_rate"] = float(frame_rate) if frame_rate is not None else self.frame_rate
        out["shift"] = shift
        return out

    def _patch(self, c: Components) -> tuple[int, int]:
        if c.transformer is not None:
            return int(c.transformer.config.patch_size), int(c.transformer.config.patch_size_t)
        return 1, 1

    def predict(self, c: Components, inputs: dict[str, Any], cond: dict[str, torch.Tensor]) -> torch.Tensor:
        c.require("transformer")
        model = c.transformer
        frames, height, width = inputs["latent_grid"]
        temporal, spatial = self.vae_ratios(c)
        mask = cond["prompt_attention_mask"].to(model.device)
        return model(
            hidden_states=inputs["noisy"].to(device=model.device, dtype=model.dtype),
            encoder_hidden_states=cond["prompt_embeds"].to(device=model.device, dtype=model.dtype),
            timestep=inputs["timesteps"].to(model.device),
            encoder_attention_mask=mask,
            num_frames=frames,
            height=height,
            width=width,
            rope_interpolation_scale=(temporal / inputs["frame_rate"], spatial, spatial),
            return_dict=False,
        )[0]
