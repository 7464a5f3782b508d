"""The model-specification interface: one object per model family hides its differences from the trainer.

A trainer written against :class:`ModelSpec` does, per batch::

    cond    = spec.encode_prompts(c, prompts)            # or cached
    dist    = spec.encode_video(c, video)                 # or cached: VAE mean/logvar, before scaling
    latents = spec.latents_from_dist(c, dist, generator)  # sample + the family's normalisation/layout
    inputs  = spec.training_step_inputs(c, latents, cond, generator=g, timestep_cfg=cfg)
    pred    = spec.predict(c, inputs, cond)
    loss    = spec.loss(pred, inputs)

and never looks inside the tensors. The flow-matching helpers shared by Wan and LTX (sigma sampling,
SD3-style loss weightings) live here; each family module documents where its numbers come from.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from densecap.config import StrictModel

__all__ = [
    "Components",
    "ModelSpec",
    "TimestepConfig",
    "flow_loss_weights",
    "sample_flow_sigmas",
    "shift_sigmas",
]


class TimestepConfig(StrictModel):
    """How training picks the noise level of each sample, and how the loss is weighted by it.

    ``sampling``: ``uniform`` (u ~ U(0, 1)), ``logit_normal`` (u = sigmoid(N(logit_mean, logit_std)), as
    in SD3), ``sigmoid_shift`` (the logit-normal u, then shifted: sigma = shift*u / (1 + (shift-1)*u),
    the shift flow-matching samplers use at inference). For flow-matching families u is the sigma
    (noise fraction); for DDPM families (CogVideoX) it picks the discrete timestep ``floor(u * T)``.

    ``shift``: ``None`` uses the family's default (Wan: 3.0; LTX: from the token count, as its
    scheduler does at inference). ``weighting`` (flow matching only): ``none``, ``sigma_sqrt``
    (1/sigma^2) or ``cosmap`` (2 / (pi * (1 - 2 sigma + 2 sigma^2))), the SD3 paper's weightings.
    """

    sampling: Literal["uniform", "logit_normal", "sigmoid_shift"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float | None = None
    weighting: Literal["none", "sigma_sqrt", "cosmap"] = "none"


@dataclass
class Components:
    """The loaded parts of one model; ``None`` for parts not loaded.

    ``vae_config`` is always there (read from the checkpoint's ``vae/config.json``), so latents can be
    normalised and positions computed without loading the VAE. ``extras`` holds family specifics
    (e.g. LTX's latent statistics, which are weights rather than config).
    """

    model_id: str
    tokenizer: Any = None
    text_encoder: Any = None
    vae: Any = None
    transformer: Any = None
    scheduler: Any = None
    vae_config: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    def require(self, *names: str) -> None:
        """Raise a clear error if any of the named parts was not loaded."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"{self.model_id}: this needs the {', '.join(missing)}, which "
                f"{'was' if len(missing) == 1 else 'were'} not loaded (see load_components' flags)"
            )


class ModelSpec(ABC):
    """Everything that differs between text-to-video model families, behind one interface."""

    #: registry name: "wan" | "cogvideox" | "ltx"
    name: str
    #: the hub id used when a config names none
    default_model_id: str
    #: other real checkpoints of the family this spec handles
    known_model_ids: tuple[str, ...] = ()
    #: prompt length the text encoder is run at (padding/truncation), as the family's pipeline does
    max_text_tokens: int
    #: frames must be ``temporal_ratio * k + 1`` (the VAE's causal temporal compression)
    temporal_ratio: int
    #: height and width must be multiples of this (VAE spatial compression x transformer patch)
    spatial_multiple: int
    #: LoRA targets: the attention projections of the transformer blocks
    lora_target_modules: ClassVar[list[str]]
    #: the pipeline class used for validation and generation
    pipeline_class_name: str
    #: the generation settings the family's authors recommend (num_frames, height, width,
    #: num_inference_steps, guidance_scale, fps), used for every setting a generation config leaves out
    generation_defaults: ClassVar[dict[str, Any]]

    # ------------------------------------------------------------------------------------------
    # shapes

    def check_shape(self, num_frames: int, height: int, width: int) -> None:
        """Raise ``ValueError`` naming the rule when the video shape is one the model cannot take."""
        r, m = self.temporal_ratio, self.spatial_multiple
        if num_frames < 1 or (num_frames - 1) % r != 0:
            ok = f"{(max(num_frames - 1, 0) // r) * r + 1} or {(max(num_frames - 1, 0) // r + 1) * r + 1}"
            raise ValueError(
                f"{self.name}: num_frames must be {r}*k + 1 (the VAE compresses time {r}x after the first "
                f"frame), got {num_frames}; e.g. {ok}"
            )
        for label, size in (("height", height), ("width", width)):
            if size < m or size % m != 0:
                raise ValueError(f"{self.name}: {label} must be a positive multiple of {m}, got {size}")

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(latent frames, latent height, latent width) of a checked video shape."""
        self.check_shape(num_frames, height, width)
        s = self.spatial_ratio
        return (num_frames - 1) // self.temporal_ratio + 1, height // s, width // s

    #: the VAE's spatial compression (set by subclasses)
    spatial_ratio: int

    # ------------------------------------------------------------------------------------------
    # loading

    def load_components(
        self,
        model_id: str,
        *,
        revision: str | None = None,
        dtype: torch.dtype = torch.float32,
        vae_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        text_encoder: bool = True,
        vae: bool = True,
        transformer: bool = True,
    ) -> Components:
        """Load the parts asked for with ``from_pretrained(model_id, subfolder=...)`` of the family's real
        classes; the tokenizer comes with the text encoder, the scheduler and the VAE config always.

        ``model_id``: a hub id, a local folder laid out like one (``pipeline.save_pretrained``), or
        ``tiny://NAME``. Text encoder and VAE are frozen (``requires_grad_(False)``, eval mode); the
        transformer is returned in eval mode for the trainer to switch. ``vae_dtype`` defaults to ``dtype``.
        """
        from t2v.tiny import resolve_t2v_model

        path = resolve_t2v_model(model_id)
        classes = self.classes()
        kw = {"revision": revision} if revision else {}
        c = Components(model_id=model_id)
        vae_cls = classes["vae"]
        c.vae_config = dict(vae_cls.load_config(path, subfolder="vae", **kw))
        sched_config = dict(classes["scheduler"].load_config(path, subfolder="scheduler", **kw))
        sched_cls = pick_class(
            classes["schedulers"],
            sched_config.get("_class_name"),
            f"{model_id} scheduler",
            classes["scheduler"].__name__,
        )
        c.scheduler = sched_cls.from_config(sched_config)
        if text_encoder:
            c.tokenizer = classes["tokenizer"].from_pretrained(path, subfolder="tokenizer", **kw)
            enc = classes["text_encoder"].from_pretrained(path, subfolder="text_encoder", dtype=dtype, **kw)
            c.text_encoder = enc.to(device).eval().requires_grad_(False)
        if vae:
            model = vae_cls.from_pretrained(path, subfolder="vae", torch_dtype=vae_dtype or dtype, **kw)
            c.vae = model.to(device).eval().requires_grad_(False)
        if transformer:
            model = classes["transformer"].from_pretrained(path, subfolder="transformer", torch_dtype=dtype, **kw)
            c.transformer = model.to(device).eval()
        self._finish_loading(c, path, kw)
        return c

    @abstractmethod
    def classes(self) -> dict[str, Any]:
        """``tokenizer``, ``text_encoder``, ``vae``, ``transformer``, ``scheduler`` (the default class) and
        ``schedulers`` (name -> class of every scheduler the family's pipeline accepts)."""

    def _finish_loading(self, c: Components, path: str, kw: dict) -> None:
        """Family-specific additions after loading (nothing by default)."""

    def after_pipeline_load(self, pipe: Any, dtype: torch.dtype, vae_dtype: torch.dtype) -> None:
        """Fix-ups a loaded pipeline needs before it runs (nothing by default)."""

    # ------------------------------------------------------------------------------------------
    # generation and data-dependent settings

    def pipeline_call_kwargs(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Extra arguments of the family's pipeline call, from the resolved generation settings
        (``fps`` included). None by default."""
        return {}

    def use_data_frame_rate(self, fps: float | None) -> None:
        """Told the frame rate of the training data before training starts (``None``: unknown); a
        family whose model depends on it keeps it. Nothing by default."""

    def comfy_module_name(self, module: str) -> str:
        """The ComfyUI name of a transformer module that carries a LoRA (``ValueError`` when the family
        has no ComfyUI LoRA layout, the default)."""
        raise ValueError(f"{self.name}: no ComfyUI LoRA layout (ComfyUI has no native loader for this family)")

    def build_pipeline(self, c: Components):
        """The family's diffusers pipeline (``pipeline_class_name``) made of these components (all must be loaded)."""
        import diffusers

        c.require("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
        pipeline_cls = getattr(diffusers, self.pipeline_class_name)
        return pipeline_cls(
            tokenizer=c.tokenizer,
            text_encoder=c.text_encoder,
            vae=c.vae,
            transformer=c.transformer,
            scheduler=c.scheduler,
        )

    # ------------------------------------------------------------------------------------------
    # conditioning and latents

    @abstractmethod
    def encode_prompts(self, c: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The transformer's text conditioning, equal to what the family's pipeline computes."""

    def encode_video(self, c: Components, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """``video`` (B, C, F, H, W) in [-1, 1] -> the VAE posterior ``{"mean", "logvar"}`` (B, z, f, h, w),
        before any family scaling or normalisation (so it can be cached and sampled later)."""
        c.require("vae")
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"{self.name}: expected a video of shape (B, 3, F, H, W), got {tuple(video.shape)}")
        self.check_shape(video.shape[2], video.shape[3], video.shape[4])
        vae = c.vae
        with torch.no_grad():
            dist = vae.encode(video.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return {"mean": dist.mean, "logvar": dist.logvar}

    def sample_dist(self, dist: dict, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        """mean + exp(logvar / 2) * eps (eps from ``generator``), or the mean when ``sample`` is False."""
        from diffusers.utils.torch_utils import randn_tensor

        mean = dist["mean"]
        if not sample:
            return mean
        std = torch.exp(0.5 * dist["logvar"].clamp(-30.0, 20.0))
        eps = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * eps

    @abstractmethod
    def latents_from_dist(
        self, c: Components, dist: dict, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Sample (or take the mean of) the posterior and apply the family's latent normalisation/layout."""

    # ------------------------------------------------------------------------------------------
    # training

    def default_timestep_config(self) -> TimestepConfig:
        """The family's default noise-level sampling (its authors' recipe)."""
        return TimestepConfig()

    @abstractmethod
    def training_step_inputs(
        self,
        c: Components,
        latents: torch.Tensor,
        cond: dict[str, torch.Tensor],
        *,
        generator: torch.Generator | None = None,
        timestep_cfg: TimestepConfig | None = None,
        noise: torch.Tensor | None = None,
        **fixed: Any,
    ) -> dict[str, Any]:
        """Noisy input, timesteps, target and per-sample loss weights for one batch.

        The generator is drawn from in a fixed order: first the noise levels, then the noise.
        ``noise`` (and the family's level argument: ``sigmas`` or ``timesteps``) may be given to fix them.
        """

    @abstractmethod
    def predict(self, c: Components, inputs: dict[str, Any], cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transformer's raw output for ``inputs`` in the family's layout."""

    def loss(self, pred: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """Per-sample mean squared error against ``inputs["target"]`` times ``inputs["weights"]``, averaged
        over the batch (computed in float32)."""
        target = inputs["target"]
        err = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        weights = inputs["weights"].to(device=err.device, dtype=torch.float32)
        return (weights * err).mean()


# --------------------------------------------------------------------------------------------------
# flow-matching helpers (Wan, LTX)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma -> shift*sigma / (1 + (shift-1)*sigma): more weight on high noise for shift > 1."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def sample_flow_sigmas(
    cfg: TimestepConfig,
    batch_size: int,
    *,
    shift: float,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``batch_size`` sigmas in [0, 1] (float32) drawn as ``cfg`` says, on the generator's device, moved
    to ``device``. ``shift`` is the resolved shift (used by ``sigmoid_shift`` only)."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if cfg.sampling == "uniform":
        u = torch.rand(batch_size, generator=generator, device=gen_device, dtype=torch.float32)
    else:
        z = torch.randn(batch_size, generator=generator, device=gen_device, dtype=torch.float32)
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * z)
        if cfg.sampling == "sigmoid_shift":
            u = shift_sigmas(u, shift)
    return u.to(device)


def flow_loss_weights(weighting: str, sigmas: torch.Tensor) -> torch.Tensor:
    """SD3's loss weightings as a function of sigma (float32)."""
    sigmas = sigmas.float()
    if weighting == "none":
        return torch.ones_like(sigmas)
    if weighting == "sigma_sqrt":
        return sigmas.clamp_min(1e-6).pow(-2.0)
    if weighting == "cosmap":
        return 2.0 / (math.pi * (1.0 - 2.0 * sigmas + 2.0 * sigmas**2))
    raise ValueError(f"unknown loss weighting {weighting!r}; allowed: none, sigma_sqrt, cosmap")


def flow_matching_inputs(
    latents: torch.Tensor,
    *,
    cfg: TimestepConfig,
    shift: float,
    num_train_timesteps: int,
    generator: torch.Generator | None,
    noise: torch.Tensor | None,
    sigmas: torch.Tensor | None,
) -> dict[str, Any]:
    """x_t = (1 - sigma) x0 + sigma * noise, target = noise - x0 (velocity), timestep = sigma * T."""
    from diffusers.utils.torch_utils import randn_tensor

    batch = latents.shape[0]
    if sigmas is None:
        sigmas = sample_flow_sigmas(cfg, batch, shift=shift, generator=generator, device=latents.device)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32, device=latents.device).reshape(batch)
    if noise is None:
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    noise = noise.to(device=latents.device, dtype=latents.dtype)
    s = sigmas.view(batch, *([1] * (latents.ndim - 1)))
    noisy = ((1.0 - s) * latents.float() + s * noise.float()).to(latents.dtype)
    return {
        "noisy": noisy,
        "timesteps": sigmas * num_train_timesteps,
        "sigmas": sigmas,
        "noise": noise,
        "target": noise.float() - latents.float(),
        "weights": flow_loss_weights(cfg.weighting, sigmas),
    }


def pick_class(allowed: dict[str, type], class_name: str | None, what: str, default: str) -> type:
    """The class named in a saved config, if it is one this family accepts."""
    name = class_name or default
    if name not in allowed:
        raise ValueError(f"{what}: class {name!r} is not one this family supports ({', '.join(sorted(allowed))})")
    return allowed[name]
