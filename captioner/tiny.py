"""Tiny, randomly initialised but architecturally real models for tests and the offline quick start.

Real checkpoints cannot be downloaded everywhere (CI, air-gapped machines), so the test suite and the
offline demo use miniature models of the same architectures as the real defaults:

* ``vlm``:  Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration`` + a Qwen2.5-VL processor), standing in
  for ``Qwen/Qwen2.5-VL-7B-Instruct``;
* ``llm``:  ``Qwen2ForCausalLM`` + a Qwen2 tokenizer, standing in for ``Qwen/Qwen2.5-7B-Instruct``;
* ``clip``: ``CLIPVisionModelWithProjection`` + ``CLIPImageProcessor``, standing in for
  ``openai/clip-vit-large-patch14-336``.

They are written with ``save_pretrained`` and are loaded back through exactly the same
``from_pretrained`` code path as real hub ids, so everything except the quality of the text is
exercised. The tokenizer is a real byte-level BPE trained at build time on a fixed built-in English
text, so any input can be tokenised and decoded.

Everything is seeded: the same seed gives byte-identical weights and an identical tokenizer.
Random weights produce gibberish text; generation is nevertheless deterministic under greedy
decoding and never stops on the first token (the end-of-turn logits are zeroed, see
``_calm_special_logits``).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from densecap.tinybuild import build_atomically, read_build_marker, tokenizer_corpus

__all__ = [
    "DEFAULT_TINY_DIR",
    "TINY_KINDS",
    "build_tiny_clip",
    "build_tiny_llm",
    "build_tiny_vlm",
    "is_complete",
    "make_tiny",
]

#: Where :func:`make_tiny` puts the models unless told otherwise.
DEFAULT_TINY_DIR: Path = (
    Path(os.environ["DENSECAP_TINY_DIR"]).expanduser()
    if os.environ.get("DENSECAP_TINY_DIR")
    else Path.home() / ".cache" / "densecap-t2v" / "tiny"
)

TINY_KINDS = ("vlm", "llm", "clip")

# Bump when the builders change, so cached builds made by an older version are redone.
_BUILD_VERSION = 1
_MARKER = ".densecap-tiny-complete.json"

# Special tokens, in Qwen's order (they come after the BPE vocabulary, as in the real tokenizer).
_ENDOFTEXT = "<|endoftext|>"
_IM_START = "<|im_start|>"
_IM_END = "<|im_end|>"
_VISION_START = "<|vision_start|>"
_VISION_END = "<|vision_end|>"
_IMAGE_PAD = "<|image_pad|>"
_VIDEO_PAD = "<|video_pad|>"
_SPECIALS = (_ENDOFTEXT, _IM_START, _IM_END, _VISION_START, _VISION_END, _IMAGE_PAD, _VIDEO_PAD)

_BPE_VOCAB_SIZE = 1200  # byte alphabet + merges; the special tokens come on top

# Same pre-tokenisation as Qwen2's tokenizer (GPT-4 style split, then byte-level mapping).
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML template that understands image/video content parts (Qwen2.5-VL style placeholders).
VLM_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# Plain ChatML for the text-only model (content parts, if any, are concatenated text).
LLM_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if 'text' in part -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# --------------------------------------------------------------------------------------------------
# tokenizer


def _train_tokenizer(chat_template: str):
    """A Qwen2 tokenizer with a BPE vocabulary trained on the built-in corpus (deterministic)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from tokenizers.models import BPE
    from transformers import Qwen2Tokenizer

    raw = Tokenizer(BPE())
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    raw.train_from_iterator(tokenizer_corpus().splitlines(keepends=True), trainer=trainer)

    model = json.loads(raw.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    for tok in _SPECIALS:  # after the BPE vocabulary, in Qwen's order
        vocab[tok] = len(vocab)

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=_IM_END,
        pad_token=_ENDOFTEXT,
        extra_special_tokens=[t for t in _SPECIALS if t not in (_IM_END, _ENDOFTEXT)],
        model_max_length=32768,
    )
    tokenizer.chat_template = chat_template
    ids = [tokenizer.convert_tokens_to_ids(t) for t in _SPECIALS]
    if ids != list(range(len(vocab) - len(_SPECIALS), len(vocab))) or len(tokenizer) != len(vocab):
        raise RuntimeError(f"tiny tokenizer: unexpected special-token ids {ids} (vocab {len(vocab)})")
    return tokenizer


def _special_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIALS}


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    ids = _special_ids(tokenizer)
    return GenerationConfig(
        bos_token_id=ids[_ENDOFTEXT],
        eos_token_id=[ids[_IM_END], ids[_ENDOFTEXT]],
        pad_token_id=ids[_ENDOFTEXT],
        # structural tokens should never be generated (a real model learns this)
        suppress_tokens=[ids[t] for t in (_IM_START, _VISION_START, _VISION_END, _IMAGE_PAD, _VIDEO_PAD)],
    )


def _calm_special_logits(model, tokenizer) -> None:
    """Zero the output rows of the end tokens so a random model does not stop at once.

    Random rows give logits spread around zero; a zero row sits at the median, so greedy decoding
    never picks an end token and sampling rarely does.
    """
    import torch

    ids = _special_ids(tokenizer)
    head = model.get_output_embeddings()
    with torch.no_grad():
        for t in (_IM_END, _ENDOFTEXT):
            head.weight[ids[t]].zero_()


# --------------------------------------------------------------------------------------------------
# atomic build directories


def is_complete(path: Path, kind: str | None = None) -> bool:
    """True when ``path`` holds a finished build (of ``kind``, if given) by this version of the builder."""
    info = read_build_marker(path)
    return info is not None and info.get("version") == _BUILD_VERSION and (kind is None or info.get("kind") == kind)


def _build_atomically(out_dir: Path, kind: str, seed: int, fill) -> Path:
    info = {"version": _BUILD_VERSION, "kind": kind, "seed": seed}
    return build_atomically(out_dir, fill, info, done=lambda d: is_complete(d, kind), quiet=_quiet_progress)


@contextlib.contextmanager
def _quiet_progress():
    """No "Writing model shards" bars for these tiny saves."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU generator for model init, restoring the caller's RNG state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------------
# builders


def _tiny_vlm_config(tokenizer):
    """The tiny Qwen2.5-VL's config: the special tokens' ids come from ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    ids = _special_ids(tokenizer)
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids[_ENDOFTEXT],
            "eos_token_id": ids[_IM_END],
            "pad_token_id": ids[_ENDOFTEXT],
            "use_sliding_window": False,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [0],
            "tokens_per_second": 2,
        },
        image_token_id=ids[_IMAGE_PAD],
        video_token_id=ids[_VIDEO_PAD],
        vision_start_token_id=ids[_VISION_START],
        vision_end_token_id=ids[_VISION_END],
        tie_word_embeddings=False,
    )


def _write_vlm_processor(d: Path) -> None:
    """The image processor and processor config of the tiny VLM (images 56..112 px a side)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    image_dict = image_processor.to_dict()
    image_dict["image_processor_type"] = "Qwen2VLImageProcessor"
    # Written by hand: the Qwen2.5-VL processor object cannot be built (so cannot save itself)
    # where torchvision, which its video processor needs, is missing. Where torchvision exists,
    # AutoProcessor builds the video processor from this entry.
    video_dict = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "min_frames": 2,
        "max_frames": 16,
        "do_sample_frames": False,
        "image_mean": list(image_dict.get("image_mean", [0.48145466, 0.4578275, 0.40821073])),
        "image_std": list(image_dict.get("image_std", [0.26862954, 0.26130258, 0.27577711])),
    }
    processor_dict = {
        "processor_class": "Qwen2_5_VLProcessor",
        "image_processor": image_dict,
        "video_processor": video_dict,
    }
    (d / "processor_config.json").write_text(json.dumps(processor_dict, indent=2, sort_keys=True) + "\n")
    (d / "chat_template.jinja").write_text(VLM_CHAT_TEMPLATE, encoding="utf-8")


def build_tiny_vlm(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny Qwen2.5-VL (model, tokenizer, image processor, chat template) in ``out_dir``.

    Vision tower: depth 1, hidden 32, patch 14, 2x2 merge; images are resized to 56..112 px a side,
    i.e. 4..16 image tokens. Language model: hidden 64, 2 layers, 4 heads (2 KV), vocab ~1.2k.
    """

    def fill(d: Path) -> None:
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        tokenizer = _train_tokenizer(VLM_CHAT_TEMPLATE)
        with _seeded(seed):
            model = Qwen2_5_VLForConditionalGeneration(_tiny_vlm_config(tokenizer))
        model = model.to(torch.float32).eval()
        _calm_special_logits(model, tokenizer)
        model.generation_config = _generation_config(tokenizer)
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        _write_vlm_processor(d)

    return _build_atomically(out_dir, "vlm", seed, fill)


def build_tiny_llm(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny ``Qwen2ForCausalLM`` (hidden 64, 2 layers, vocab ~1.2k) with its tokenizer."""

    def fill(d: Path) -> None:
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        tokenizer = _train_tokenizer(LLM_CHAT_TEMPLATE)
        ids = _special_ids(tokenizer)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            use_sliding_window=False,
            tie_word_embeddings=False,
            bos_token_id=ids[_ENDOFTEXT],
            eos_token_id=ids[_IM_END],
            pad_token_id=ids[_ENDOFTEXT],
        )
        with _seeded(seed):
            model = Qwen2ForCausalLM(config)
        model = model.to(torch.float32).eval()
        _calm_special_logits(model, tokenizer)
        model.generation_config = _generation_config(tokenizer)
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)

    return _build_atomically(out_dir, "llm", seed, fill)


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny ``CLIPVisionModelWithProjection`` (32 px images, 8 px patches) + image processor."""

    def fill(d: Path) -> None:
        import torch
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil,
        )

        config = CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=32,
        )
        with _seeded(seed):
            model = CLIPVisionModelWithProjection(config)
        model.to(torch.float32).eval().save_pretrained(d)
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            do_center_crop=True,
        )
        processor.save_pretrained(d)

    return _build_atomically(out_dir, "clip", seed, fill)


_BUILDERS = {"vlm": build_tiny_vlm, "llm": build_tiny_llm, "clip": build_tiny_clip}


def make_tiny(out_dir: Path | None = None, *, force: bool = False) -> dict[str, Path]:
    """Build the three tiny models under ``out_dir/{vlm,llm,clip}`` (default :data:`DEFAULT_TINY_DIR`).

    Complete builds are reused unless ``force``; an interrupted build has no marker and is redone.
    Returns ``{"vlm": path, "llm": path, "clip": path}``.
    """
    root = Path(out_dir).expanduser() if out_dir is not None else DEFAULT_TINY_DIR
    paths: dict[str, Path] = {}
    for kind in TINY_KINDS:
        path = (root / kind).resolve()
        if force or not is_complete(path, kind):
            _BUILDERS[kind](path, seed=0)
        paths[kind] = path
    return paths
