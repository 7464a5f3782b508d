"""The trainer's config (``t2v train --config CFG``): a pydantic model, filled from YAML plus
``--set KEY=VALUE`` overrides (:func:`captioner.configbase.load_config`).

Sections: ``model`` (family and checkpoint), ``data`` (:class:`t2v.data.DataConfig` plus where the
samples come from: videos encoded on the fly, or a latent cache made by ``t2v prepare``),
``training`` (steps, batch, precision, noise levels), ``lora`` (or ``training.mode: full``),
``optimizer`` (and the LR schedule), ``ema``, ``checkpoint``, ``validation``, ``logging``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from densecap.config import StrictModel
from t2v.data import DataConfig
from t2v.families.base import TimestepConfig
from t2v.model_ref import FamilyModelRef

__all__ = [
    "CheckpointConfig",
    "EMAConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimizerConfig",
    "TrainConfig",
    "TrainDataConfig",
    "TrainingConfig",
    "ValidationConfig",
]

Dtype = Literal["float32", "bfloat16", "float16"]


class ModelConfig(FamilyModelRef):
    """The base model that is fine-tuned."""

    vae_dtype: Dtype = Field(
        "float32", description="dtype of the VAE when videos are encoded on the fly (and for validation)")


class TrainDataConfig(DataConfig):
    """:class:`t2v.data.DataConfig` plus the source of the samples.

    ``path``: videos + captions, encoded on the fly by the (frozen) VAE and text encoder every step.
    ``cache_dir``: a latent cache made by ``t2v prepare``; the VAE and text encoder are then not
    loaded for training (only for validation). With a cache, the frame settings (buckets, fps, ...)
    are the cache's; ``caption_dropout`` and ``seed`` still apply here.
    """

    path: str | None = Field(None, description="dataset file or folder (see t2v.data.read_samples)")
    cache_dir: str | None = Field(None, description="latent cache folder from `t2v prepare` (replaces path)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    drop_last: bool = Field(False, description="drop each bucket's last, smaller batch of an epoch")

    @model_validator(mode="after")
    def _check_source(self) -> TrainDataConfig:
        if self.path is None and self.cache_dir is None:
            raise ValueError("give data.path (videos encoded on the fly) or data.cache_dir (a latent cache "
                             "made by `t2v prepare`)")
        return self


class TrainingConfig(StrictModel):
    """Steps, batches, precision and the noise-level recipe."""

    mode: Literal["lora", "full"] = Field("lora", description="lora: train a LoRA (see lora); full: every weight")
    max_steps: int = Field(1000, ge=1, description="optimizer steps of the whole run")
    batch_size: int = Field(1, ge=1, description="samples per micro-batch per process")
    gradient_accumulation_steps: int = Field(1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="autocast dtype; frozen weights are stored in it too (trainable ones stay float32)")
    gradient_checkpointing: bool = False
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm to this; null: no clipping")
    seed: int = 0
    timesteps: TimestepConfig | None = Field(
        None, description="noise-level sampling and loss weighting; null: the family's recipe")
    sample_posterior: bool = Field(True, description="sample the VAE posterior each step (false: use its mean)")
    save_dtype: Dtype = Field("float32", description="dtype of the exported LoRA / transformer weights")
    allow_tf32: bool = Field(True, description="allow TF32 matmuls on Ampere+ GPUs")


class LoraConfig(StrictModel):
    """The LoRA adapter (peft) injected into the transformer (``training.mode: lora``)."""

    rank: int = Field(16, ge=1)
    alpha: float | None = Field(None, gt=0, description="scale = alpha / rank; null: alpha = rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="module names (peft target_modules); null: the family's attention projections")
    init: Literal["default", "gaussian"] = Field("default", description="peft init_lora_weights (B = 0 either way)")
    comfy: bool = Field(False, description="also write the LoRA with ComfyUI's key layout (Wan, LTX)")

    @field_validator("target_modules")
    @classmethod
    def _nonempty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("give at least one module, or null for the family's default")
        return v


class OptimizerConfig(StrictModel):
    """The optimizer and the learning-rate schedule (``diffusers.optimization.get_scheduler``)."""

    name: Literal["adamw", "adamw8bit"] = Field("adamw", description="adamw8bit needs bitsandbytes")
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(1e-4, ge=0)
    eps: float = Field(1e-8, gt=0)
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                       "polynomial"] = Field(
        "constant", description="constant with warmup_steps > 0 means constant_with_warmup")
    warmup_steps: int = Field(0, ge=0)
    num_cycles: int = Field(1, ge=1, description="cosine_with_restarts: hard restarts")
    power: float = Field(1.0, gt=0, description="polynomial: decay power")


class EMAConfig(StrictModel):
    """An exponential moving average of the trainable weights (``diffusers.training_utils.EMAModel``).
    When enabled, validation and the exported weights use the average."""

    enabled: bool = False
    decay: float = Field(0.9999, gt=0.0, le=1.0)
    min_decay: float = Field(0.0, ge=0.0, le=1.0)
    update_after_step: int = Field(0, ge=0)
    warmup: bool = Field(False, description="EMA warmup (inv_gamma, power) instead of (1+n)/(10+n)")
    inv_gamma: float = Field(1.0, gt=0)
    power: float = Field(2 / 3, gt=0)


class CheckpointConfig(StrictModel):
    """Resumable checkpoints under ``OUT/checkpoints/step-N``."""

    every: int | None = Field(500, ge=1, description="save every N steps; null: never (except at_end)")
    keep_last: int | None = Field(3, ge=1, description="keep the newest K complete checkpoints; null: all")
    at_end: bool = Field(True, description="also save one at the last step (so a run can be extended)")


class ValidationConfig(StrictModel):
    """Short clips generated for fixed prompts, saved as mp4 under ``OUT/validation/step-N/``."""

    every: int | None = Field(None, ge=1, description="generate every N steps; null: never (except at_end)")
    at_end: bool = Field(True, description="also generate after the last step (when prompts are given)")
    prompts: list[str] = Field(default_factory=list)
    negative_prompt: str = ""
    num_frames: int = Field(17, ge=1)
    height: int = Field(480, ge=16)
    width: int = Field(832, ge=16)
    num_inference_steps: int = Field(30, ge=1)
    guidance_scale: float = Field(5.0, ge=0.0)
    seed: int = 0
    fps: float = Field(16.0, gt=0, description="frame rate of the saved mp4s (and LTX's frame_rate)")
    expand: str | None = Field(
        None, description="expand the prompts first with this expansion config (path or preset), as at inference; "
                          "the model is trained on dense captions, so short prompts alone under-show what it learned")


class LoggingConfig(StrictModel):
    """Where metrics go: accelerate trackers plus ``OUT/metrics.jsonl`` (always written)."""

    log_with: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"], description="trackers; [] for metrics.jsonl only")
    project: str = Field("densecap-t2v", description="tracker project name")
    run_name: str | None = Field(None, description="tracker run name; default: the output folder's name")
    every: int = Field(1, ge=1, description="log every N steps")

    @field_validator("log_with", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        if v is None or v == "none":
            return []
        if isinstance(v, str):
            return [v]
        return v


class TrainConfig(StrictModel):
    """``t2v train``: everything a run needs except its output folder (``--out``)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: TrainDataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
