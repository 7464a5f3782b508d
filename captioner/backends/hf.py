"""Local transformers chat models (a VLM or a text-only LLM), batched, greedy or seeded sampling.

The model is loaded with ``from_pretrained`` (hub id or local folder) and prompted with its own
chat template. Prompts are left-padded so every row of a batch ends at the same position and the
new tokens start at the same column; greedy output therefore does not depend on the batch size.
"""

from __future__ import annotations

import copy
import gc
import logging
from collections.abc import Sequence
from typing import Any

from captioner.backends.config import HFBackendConfig
from captioner.backends.base import (
    ChatBackend,
    Conversation,
    Message,
    check_seeds,
    chunked,
    prepare_image,
)
from densecap.devices import resolve_device, resolve_dtype
from densecap.errors import BackendError

log = logging.getLogger(__name__)

__all__ = ["HFBackend", "load_processor"]

def _is_vlm_config(config: Any) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or hasattr(config, "vision_config")


def _without_video_processor(proc_cls: type) -> type:
    """``proc_cls`` that accepts ``video_processor=None`` (used only when torchvision is missing)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument is None and "video" in argument_name:
            return None
        return proc_cls.check_argument_for_proper_class(self, argument_name, argument)

    return type(proc_cls.__name__, (proc_cls,), {"check_argument_for_proper_class": check_argument_for_proper_class})


def load_processor(model: str, revision: str | None = None):
    """``AutoProcessor.from_pretrained``, or, where that fails only because the processor's video
    processor needs torchvision (not installed), the same processor built without one.

    transformers 5 has no PIL fallback for video processors, so Qwen2/2.5-VL processors cannot be
    built at all without torchvision; images do not need it (the image processor has a PIL backend).
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    try:
        return AutoProcessor.from_pretrained(model, revision=revision)
    except Exception as first_error:  # noqa: BLE001 - decide below whether to fall back
        if is_torchvision_available():
            raise
        original = first_error

    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    proc_cls = None
    try:
        processor_dict, _ = transformers.ProcessorMixin.get_processor_dict(model, revision=revision)
    except Exception:  # noqa: BLE001
        processor_dict = {}
    name = processor_dict.get("processor_class")
    if name is None:
        config = AutoConfig.from_pretrained(model, revision=revision)
        name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    if isinstance(name, str):
        proc_cls = getattr(transformers, name, None)
    if proc_cls is None or not any("video" in a for a in proc_cls.get_attributes()):
        raise original
    processor_dict, instantiation_kwargs = proc_cls.get_processor_dict(model, revision=revision)
    args = []
    for attribute in proc_cls.get_attributes():
        if "video" in attribute:
            args.append(None)
        elif "tokenizer" in attribute:
            args.append(AutoTokenizer.from_pretrained(model, revision=revision))
        elif "image_processor" in attribute:
            args.append(AutoImageProcessor.from_pretrained(model, revision=revision))
        else:
            raise original
    log.info("%s: torchvision is not installed; using %s without its video processor", model, name)
    return _without_video_processor(proc_cls).from_args_and_dict(args, processor_dict, **instantiation_kwargs)


class HFBackend(ChatBackend):
    """A transformers chat model on one device. See :class:`HFBackendConfig` for the settings."""

    name = "hf"

    def __init__(self, cfg: HFBackendConfig):
        self.cfg = cfg
        try:
            import torch
            import transformers
            from transformers import AutoConfig
        except ImportError as exc:  # pragma: no cover - torch/transformers are dependencies
            raise BackendError(f"the hf backend needs torch and transformers: {exc}") from exc
        self._torch = torch

        self.device = torch.device(resolve_device(cfg.device))
        self.dtype = resolve_dtype(cfg.dtype, self.device)

        where = f"{cfg.model}" + (f"@{cfg.revision}" if cfg.revision else "")
        try:
            config = AutoConfig.from_pretrained(cfg.model, revision=cfg.revision)
        except Exception as exc:  # noqa: BLE001 - OSError, ValueError, hub errors...
            raise BackendError(f"hf backend: cannot load the config of {where}: {exc}") from exc
        self.kind = cfg.kind if cfg.kind != "auto" else ("vlm" if _is_vlm_config(config) else "llm")

        load_kwargs: dict[str, Any] = {"revision": cfg.revision, "dtype": self.dtype}
        if cfg.attn_implementation:
            load_kwargs["attn_implementation"] = cfg.attn_implementation
        try:
            if self.kind == "vlm":
                self.processor = load_processor(cfg.model, revision=cfg.revision)
                if not isinstance(self.processor, transformers.ProcessorMixin):
                    raise BackendError(
                        f"hf backend: {where} has no image processor ({type(self.processor).__name__} only); "
                        "it is not a vision-language model: use kind=llm or kind=auto"
                    )
                self.tokenizer = self.processor.tokenizer
                model_cls = transformers.AutoModelForImageTextToText
            else:
                self.processor = None
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.model, revision=cfg.revision)
                model_cls = transformers.AutoModelForCausalLM
            self.model = model_cls.from_pretrained(cfg.model, **load_kwargs)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"hf backend: cannot load {self.kind} {where}: {type(exc).__name__}: {exc}") from exc
        self.model.to(self.device)
        self.model.eval()

        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.chat_template is None and getattr(self.processor, "chat_template", None) is None:
            raise BackendError(f"hf backend: {where} has no chat template (is it an instruct/chat model?)")
        self._commit = getattr(self.model.config, "_commit_hash", None)

    # ------------------------------------------------------------------ interface

    @property
    def supports_images(self) -> bool:
        return self.kind == "vlm"

    def describe(self) -> dict:
        cfg = self.cfg
        gen = self._generation_config(cfg.max_new_tokens) if getattr(self, "model", None) is not None else None
        return {
            "backend": self.name,
            "model": cfg.model,
            "revision": cfg.revision,
            "commit": self._commit if hasattr(self, "_commit") else None,
            "kind": getattr(self, "kind", cfg.kind),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "attn_implementation": cfg.attn_implementation,
            "batch_size": cfg.batch_size,
            "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "seed": cfg.seed,
            "max_image_side": cfg.max_image_side,
            "generation": None
            if gen is None
            else {
                k: getattr(gen, k, None)
                for k in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
            },
            "transformers_version": _transformers_version(),
        }

    def close(self) -> None:
        for attr in ("model", "processor", "tokenizer"):
            if hasattr(self, attr):
                setattr(self, attr, None)
        gc.collect()
        torch = getattr(self, "_torch", None)
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """Batched generation (left padding). With ``seeds`` and sampling, each conversation is generated
        on its own after seeding, so its reply does not depend on what else is in the batch; greedy
        decoding ignores seeds and batches as usual."""
        if getattr(self, "model", None) is None:
            raise BackendError("hf backend: generate() called after close()")
        conversations = list(conversations)
        if not conversations:
            return []
        for i, conv in enumerate(conversations):
            self._check_conversation(i, conv)
        limit = self.cfg.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if limit < 1:
            raise ValueError("max_new_tokens must be >= 1")
        gen_config = self._generation_config(limit)
        torch = self._torch
        seeds = check_seeds(seeds, len(conversations), self.name)

        outputs: list[str] = []
        fork_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
            # one seed per call: the same inputs and seed give the same text, and the caller's RNG
            # state is left untouched
            if seeds is not None and gen_config.do_sample:
                for conv, seed in zip(conversations, seeds):
                    torch.manual_seed(seed)
                    outputs.extend(self._generate_chunk([conv], gen_config))
                return outputs
            torch.manual_seed(self.cfg.seed)
            for _, chunk in chunked(conversations, self.cfg.batch_size):
                outputs.extend(self._generate_chunk(chunk, gen_config))
        return outputs

    # ------------------------------------------------------------------ internals

    def _check_conversation(self, index: int, conv: Conversation) -> None:
        if not conv:
            raise BackendError(f"hf backend: conversation {index} is empty")
        for msg in conv:
            if not isinstance(msg, Message):
                raise BackendError(f"hf backend: conversation {index} holds a {type(msg).__name__}, not a Message")
            if msg.has_images and self.kind != "vlm":
                raise BackendError(
                    f"hf backend: conversation {index} contains images but {self.cfg.model} is loaded as a "
                    "text-only model (kind=llm); use a vision-language model"
                )

    def _generation_config(self, max_new_tokens: int):
        gc_ = copy.deepcopy(self.model.generation_config)
        gc_.max_new_tokens = max_new_tokens
        gc_.max_length = None
        gc_.num_beams = 1
        gc_.num_return_sequences = 1
        if self.cfg.temperature == 0.0:
            gc_.do_sample = False
            gc_.temperature = None
            gc_.top_p = None
            gc_.top_k = None
        else:
            gc_.do_sample = True
            gc_.temperature = self.cfg.temperature
            gc_.top_p = self.cfg.top_p
            gc_.top_k = 0  # no top-k cut: temperature and top_p only, like the openai backend
        if gc_.pad_token_id is None:
            gc_.pad_token_id = self.tokenizer.pad_token_id
        return gc_

    def _encode(self, chunk: Sequence[Conversation]):
        if self.kind == "vlm":
            prompts = []
            images = []
            for conv in chunk:
                messages = []
                for msg in conv:
                    parts = []
                    for p in msg.content:
                        if isinstance(p, str):
                            parts.append({"type": "text", "text": p})
                        else:
                            parts.append({"type": "image"})
                            images.append(prepare_image(p, self.cfg.max_image_side))
                    messages.append({"role": msg.role, "content": parts})
                prompts.append(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            bos = self.tokenizer.bos_token
            add_special = not (bos is not None and prompts[0].startswith(bos))
            return self.processor(
                text=prompts,
                images=images or None,
                padding=True,
                return_tensors="pt",
                add_special_tokens=add_special,
            )
        prompts = [
            self.tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.text} for m in conv], tokenize=False, add_generation_prompt=True
            )
            for conv in chunk
        ]
        return self.tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)

    def _generate_chunk(self, chunk: Sequence[Conversation], gen_config) -> list[str]:
        try:
            inputs = self._encode(chunk)
        except Exception as exc:  # noqa: BLE001 - template / processor errors
            raise BackendError(f"hf backend: cannot build the prompt for {self.cfg.model}: {exc}") from exc
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        try:
            out = self.model.generate(**inputs, generation_config=gen_config)
        except Exception as exc:  # noqa: BLE001 - OOM, shape errors...
            raise BackendError(
                f"hf backend: generation with {self.cfg.model} failed: {type(exc).__name__}: {exc}"
            ) from exc
        new_tokens = out[:, prompt_len:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        pad_id = self.tokenizer.pad_token_id
        prompt_tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int(inputs["input_ids"].numel())
        generated = int((new_tokens != pad_id).sum()) if pad_id is not None else int(new_tokens.numel())
        self._count_usage(len(chunk), prompt_tokens, generated)
        return [t.strip() for t in texts]


def _transformers_version() -> str | None:
    try:
        import transformers

        return transformers.__version__
    except ImportError:  # pragma: no cover
        return None
