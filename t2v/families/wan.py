"""Wan 2.1 text-to-video (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, ``Wan-AI/Wan2.1-T2V-14B-Diffusers``).

Where the numbers come from:

* Objective: rectified flow with the velocity target, x_t = (1 - t) x0 + t * noise,
  v = noise - x0 (the Wan2.1 technical report; the same formulation in DiffSynth-Studio's FlowMatch
  trainer used for Wan, and in diffusers' ``FlowMatchEulerDiscreteScheduler``). The transformer takes
  ``timestep = sigma * 1000`` (``num_train_timesteps`` of the checkpoint's scheduler).
* Noise levels: logit-normal u (mean 0, std 1) passed through the flow shift, ``sigmoid_shift`` with
  shift 3.0. Wan2.1 samples logit-normal timesteps with a resolution-dependent flow shift; 3.0 is the
  shift of the 1.3B checkpoint's own scheduler config (480p; Wan's README uses 5.0 at 720p) and the value
  community trainers (musubi-tuner) recommend for Wan2.1 LoRAs. No loss weighting.
* Latents: ``AutoencoderKLWan`` (4x temporal, 8x spatial, 16 channels), normalised per channel with the
  VAE config's ``latents_mean``/``latents_std``: z' = (z - mean) / std, the inverse of what
  ``WanPipeline`` does before decoding.
* Text: UMT5-XXL, 512 tokens (``WanPipeline.__call__``'s ``max_sequence_length``), prompts cleaned with
  the pipeline's ``prompt_clean``; positions past each prompt's length are zeroed, as the pipeline does.
* Shapes: frames 4k+1; height and width multiples of 16 (VAE 8 x patch 2).
* LoRA: the attention projections ``to_q``/``to_k``/``to_v``/``to_out.0`` of self- and cross-attention
  (the modules Wan LoRAs in diffusers' format target).

Not covered: Wan 2.2 (two transformers, and the TI2V-5B's 16x VAE).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch

from t2v.families.base import (
    Components,
    ModelSpec,
    TimestepConfig,
    flow_matching_inputs,
)

# ComfyUI names of the modules of the diffusers Wan transformer (the original Wan checkpoint names)
_WAN_ATTN = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "add_k_proj": "k_img", "add_v_proj": "v_img"}
_WAN_TOP = {
    "proj_out": "head.head",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _comfy_name(name: str) -> str:
    m = _BLOCK.match(name)
    if m:
        i, rest = m.groups()
        for attn, orig in (("attn1.", "self_attn."), ("attn2.", "cross_attn.")):
            if rest.startswith(attn) and rest[len(attn):] in _WAN_ATTN:
                return f"blocks.{i}.{orig}{_WAN_ATTN[rest[len(attn):]]}"
        ffn = {"ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}
        if rest in ffn:
            return f"blocks.{i}.{ffn[rest]}"
    elif name in _WAN_TOP:
        return _WAN_TOP[name]
    raise ValueError(f"wan: no ComfyUI name known for the LoRA on {name!r}; train without lora.comfy or "
                     "target the attention/ffn layers")



class WanSpec(ModelSpec):
    name = "wan"
    default_model_id = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    known_model_ids = ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers")
    max_text_tokens = 512
    temporal_ratio = 4
    spatial_ratio = 8
    spatial_multiple = 16
    lora_target_modules: ClassVar[list[str]] = ["to_q", "to_k", "to_v", "to_out.0"]
    pipeline_class_name = "WanPipeline"
    # WanPipeline.__call__'s defaults (480x832, 81 frames, 50 steps, guidance 5.0) and its docstring
    # example (export_to_video(..., fps=16)), in the installed diffusers
    generation_defaults: ClassVar[dict[str, Any]] = {
        "num_frames": 81, "height": 480, "width": 832, "num_inference_steps": 50, "guidance_scale": 5.0, "fps": 16.0}
    default_shift = 3.0

    def comfy_module_name(self, module: str) -> str:
        return _comfy_name(module)

    def classes(self) -> dict[str, Any]:
        from diffusers import (
            AutoencoderKLWan,
            FlowMatchEulerDiscreteScheduler,
            UniPCMultistepScheduler,
            WanTransformer3DModel,
        )
        from transformers import AutoTokenizer, UMT5EncoderModel

        return {
            "tokenizer": AutoTokenizer,
            "text_encoder": UMT5EncoderModel,
            "vae": AutoencoderKLWan,
            "transformer": WanTransformer3DModel,
            "scheduler": UniPCMultistepScheduler,
            "schedulers": {
                "UniPCMultistepScheduler": UniPCMultistepScheduler,
                "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
            },
        }

    # ------------------------------------------------------------------------------------------

    def encode_prompts(self, c: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        c.require("tokenizer", "text_encoder")
        texts = [prompt_clean(p) for p in prompts]
        tok = c.tokenizer(
            texts,
            padding="max_length",
            max_length=self.max_text_tokens,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = c.text_encoder.device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        with torch.no_grad():
            hidden = c.text_encoder(ids, mask).last_hidden_state
        keep = mask.bool().unsqueeze(-1)
        return {"prompt_embeds": torch.where(keep, hidden, torch.zeros_like(hidden))}

    def latents_from_dist(
        self, c: Components, dist: dict, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        z = self.sample_dist(dist, generator, sample)
        channels = z.shape[1]
        mean = torch.tensor(c.vae_config["latents_mean"], dtype=torch.float32, device=z.device).view(
            1, channels, 1, 1, 1
        )
        std = torch.tensor(c.vae_config["latents_std"], dtype=torch.float32, device=z.device).view(1, channels, 1, 1, 1)
        return ((z.float() - mean) / std).to(z.dtype)

    # ------------------------------------------------------------------------------------------

    def default_timestep_config(self) -> TimestepConfig:
        return TimestepConfig(sampling="sigmoid_shift", logit_mean=0.0, logit_std=1.0, shift=self.default_shift)

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
    ) -> dict[str, Any]:
        """Flow matching on (B, C, F, H, W) latents; ``sigmas`` (B,) and ``noise`` may be fixed."""
        cfg = timestep_cfg or self.default_timestep_config()
        shift = cfg.shift if cfg.shift is not None else self.default_shift
        return flow_matching_inputs(
            latents,
            cfg=cfg,
            shift=shift,
            num_train_timesteps=int(c.scheduler.config.num_train_timesteps),
            generator=generator,
            noise=noise,
            sigmas=sigmas,
        )

    def predict(self, c: Components, inputs: dict[str, Any], cond: dict[str, torch.Tensor]) -> torch.Tensor:
        c.require("transformer")
        model = c.transformer
        noisy = inputs["noisy"]
        return model(
            hidden_states=noisy.to(device=model.device, dtype=model.dtype),
            timestep=inputs["timesteps"].to(model.device),
            encoder_hidden_states=cond["prompt_embeds"].to(device=model.device, dtype=model.dtype),
            return_dict=False,
        )[0]
