"""Tiny, randomly initialised text-to-video pipelines of the real diffusers architectures.

Each stands in for a real checkpoint of one model family (see :mod:`t2v.families`) so that the
trainer, the latent cache and generation can be tested offline, through the same
``from_pretrained(subfolder=...)`` code path as hub ids:

* ``wan``: ``WanPipeline`` = ``WanTransformer3DModel`` + ``AutoencoderKLWan`` + ``UMT5EncoderModel`` +
  T5 tokenizer + ``UniPCMultistepScheduler`` (flow sigmas, shift 3), standing in for
  ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``;
* ``cogvideox``: ``CogVideoXPipeline`` = ``CogVideoXTransformer3DModel`` (rotary positions, as in the
  5b model) + ``AutoencoderKLCogVideoX`` + ``T5EncoderModel`` + T5 tokenizer + ``CogVideoXDDIMScheduler``
  (v-prediction, zero terminal SNR, SNR shift 3), standing in for ``THUDM/CogVideoX-2b``/``-5b``;
* ``ltx``: ``LTXPipeline`` = ``LTXVideoTransformer3DModel`` + ``AutoencoderKLLTXVideo`` +
  ``T5EncoderModel`` + T5 tokenizer + ``FlowMatchEulerDiscreteScheduler`` (resolution-dependent shift),
  standing in for ``Lightricks/LTX-Video``.

The VAEs keep the real compression factors (Wan and CogVideoX: 4x in time, 8x in space; LTX: 8x in
time, 32x in space), so the frame and size rules of the real models apply unchanged; only the
channel counts and depths are tiny. Latent statistics (Wan's ``latents_mean``/``latents_std``, LTX's
buffers, CogVideoX's ``scaling_factor``) are set to non-trivial values so that normalisation is
exercised. The tokenizer is a real T5-style Unigram tokenizer trained at build time on a fixed
built-in English text (the one ``captioner``'s tiny models use).

Everything is seeded: the same seed gives byte-identical weights and an identical tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from densecap.tinybuild import build_atomically, read_build_marker

__all__ = [
    "TINY_FAMILIES",
    "build_tiny_cogvideox",
    "build_tiny_ltx",
    "build_tiny_wan",
    "default_tiny_root",
    "is_complete",
    "make_tiny",
    "resolve_t2v_model",
]

TINY_FAMILIES = ("wan", "cogvideox", "ltx")
TINY_SCHEME = "tiny://"

# Bump when the builders change, so cached builds made by an older version are redone.
_BUILD_VERSION = 1
_MARKER = ".densecap-t2v-tiny-complete.json"

_TEXT_DIM = 32  # hidden size of the tiny T5 encoders (the transformers' text/caption input size)
# Printable ASCII, so that any English prompt tokenises without unknown pieces.
_ALPHABET = [chr(i) for i in range(33, 127)]


def default_tiny_root() -> Path:
    """``tiny_dir() / "t2v"``: ``$DENSECAP_TINY_DIR/t2v`` or ``~/.cache/densecap-t2v/tiny/t2v``."""
    from densecap.modelrefs import tiny_dir

    return tiny_dir() / "t2v"


# --------------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU generator for module init, restoring the caller's RNG state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet():
    """No progress bars or info chatter for these tiny saves."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    hf_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    df_level = df_logging.get_verbosity()
    df_logging.set_verbosity_error()
    try:
        yield
    finally:
        df_logging.set_verbosity(df_level)
        if hf_bars:
            hf_logging.enable_progress_bar()


def is_complete(path: Path, family: str | None = None) -> bool:
    """True when ``path`` holds a finished build (of ``family``, if given) by this version of the builder."""
    info = read_build_marker(path, _MARKER)
    return info is not None and info.get("version") == _BUILD_VERSION and (family is None or info.get("family") == family)


def _build_atomically(out_dir: Path, family: str, seed: int, fill) -> Path:
    info = {"version": _BUILD_VERSION, "family": family, "seed": seed}
    return build_atomically(out_dir, fill, info, marker=_MARKER, done=lambda d: is_complete(d, family), quiet=_quiet)


def _train_t5_tokenizer(model_max_length: int):
    """A T5 tokenizer (``<pad>``=0, ``</s>``=1, ``<unk>``=2, Metaspace pieces, ``</s>`` appended) whose
    Unigram vocabulary is trained on the built-in English corpus. Deterministic."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import Unigram
    from transformers import T5Tokenizer

    from densecap.tinybuild import tokenizer_corpus

    raw = Tokenizer(Unigram())
    # the same pre-tokenisation as T5Tokenizer, so the trained pieces carry its "▁" word marker
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=1000,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        max_piece_length=16,
        show_progress=False,
    )
    # one line of all printable ASCII characters: every one becomes a (low-scored) piece
    raw.train_from_iterator([*tokenizer_corpus().splitlines(), " ".join(_ALPHABET)], trainer=trainer)
    trained = json.loads(raw.to_str())["model"]["vocab"]
    if [p for p, _ in trained[:3]] != ["<pad>", "</s>", "<unk>"]:
        raise RuntimeError(f"tiny T5 tokenizer: unexpected special tokens {trained[:3]}")
    # The trainer is not bit-reproducible: scores differ in their last bits between runs (hash-map
    # order in its sums), and the characters it appends at the bottom (scores stepping down by 1e-4
    # from the lowest) come in hash-map order. Round the scores, hand the bottom characters their
    # scores in character order, and sort, so that the same corpus always gives the same file.
    scores = {p: round(float(s), 6) for p, s in trained[3:]}
    singles = [p for p in scores if len(p) == 1]
    floor = min(scores.values())
    bottom = sorted(p for p in singles if scores[p] <= floor + 1e-4 * len(singles) + 1e-9)
    for piece, score in zip(bottom, sorted((scores[p] for p in bottom), reverse=True)):
        scores[piece] = score
    pieces = sorted(scores.items(), key=lambda ps: (-ps[1], ps[0]))
    vocab = [(p, 0.0) for p, _ in trained[:3]] + pieces
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _t5_encoder(cls_name: str, vocab_size: int, seed: int):
    """A one-layer T5 (or UMT5) encoder, hidden size 32."""
    import transformers

    config_cls = {"T5EncoderModel": transformers.T5Config, "UMT5EncoderModel": transformers.UMT5Config}[cls_name]
    config = config_cls(
        vocab_size=vocab_size,
        d_model=_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seeded(seed):
        model = getattr(transformers, cls_name)(config)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# builders


def build_tiny_wan(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny ``WanPipeline`` in ``out_dir`` (about 0.5 MB).

    Transformer: 1 layer, 2 heads of 12, patch (1, 2, 2), 4 latent channels, text dim 32.
    VAE: base_dim 8, z_dim 4, 4x temporal / 8x spatial compression.
    """

    def fill(d: Path) -> None:
        from diffusers import (
            AutoencoderKLWan,
            UniPCMultistepScheduler,
            WanPipeline,
            WanTransformer3DModel,
        )

        tokenizer = _train_t5_tokenizer(512)
        text_encoder = _t5_encoder("UMT5EncoderModel", len(tokenizer), seed)
        with _seeded(seed + 1):
            vae = AutoencoderKLWan(
                base_dim=8,
                z_dim=4,
                dim_mult=[1, 1, 1, 1],
                num_res_blocks=1,
                temperal_downsample=[False, True, True],
                latents_mean=[0.25, -0.5, 0.75, -0.125],
                latents_std=[1.5, 0.5, 2.0, 0.75],
            )
        with _seeded(seed + 2):
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=2,
                attention_head_dim=12,
                in_channels=4,
                out_channels=4,
                text_dim=_TEXT_DIM,
                freq_dim=32,
                ffn_dim=48,
                num_layers=1,
                rope_max_seq_len=64,
            )
        # the scheduler of Wan2.1-T2V-1.3B-Diffusers (UniPC on flow sigmas, shift 3.0 for 480p)
        scheduler = UniPCMultistepScheduler(
            num_train_timesteps=1000,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=3.0,
            solver_order=2,
            solver_type="bh2",
            predict_x0=True,
            lower_order_final=True,
            final_sigmas_type="zero",
        )
        pipe = WanPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )
        pipe.save_pretrained(d)

    return _build_atomically(out_dir, "wan", seed, fill)


def build_tiny_cogvideox(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny ``CogVideoXPipeline`` in ``out_dir`` (about 0.5 MB).

    Transformer: 1 layer, 2 heads of 16, patch 2, rotary positions (as CogVideoX-5b), 4 latent
    channels, text dim 32, 226 text tokens. VAE: 8 channels, 4x temporal / 8x spatial compression,
    scaling factor 1.15258426 (CogVideoX-2b's).
    """

    def fill(d: Path) -> None:
        from diffusers import (
            AutoencoderKLCogVideoX,
            CogVideoXDDIMScheduler,
            CogVideoXPipeline,
            CogVideoXTransformer3DModel,
        )

        tokenizer = _train_t5_tokenizer(226)
        text_encoder = _t5_encoder("T5EncoderModel", len(tokenizer), seed)
        with _seeded(seed + 1):
            vae = AutoencoderKLCogVideoX(
                block_out_channels=(8, 8, 8, 8),
                latent_channels=4,
                layers_per_block=1,
                norm_num_groups=4,
                temporal_compression_ratio=4,
                sample_height=64,
                sample_width=64,
                scaling_factor=1.15258426,
            )
        with _seeded(seed + 2):
            transformer = CogVideoXTransformer3DModel(
                num_attention_heads=2,
                attention_head_dim=16,
                in_channels=4,
                out_channels=4,
                time_embed_dim=16,
                text_embed_dim=_TEXT_DIM,
                num_layers=1,
                sample_width=8,
                sample_height=8,
                sample_frames=17,
                patch_size=2,
                temporal_compression_ratio=4,
                max_text_seq_length=226,
                use_rotary_positional_embeddings=True,
            )
        # the scheduler of CogVideoX-2b (CogVideoX-5b: the same with snr_shift_scale 1.0)
        scheduler = CogVideoXDDIMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=True,
            steps_offset=0,
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            rescale_betas_zero_snr=True,
            snr_shift_scale=3.0,
        )
        pipe = CogVideoXPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )
        pipe.save_pretrained(d)

    return _build_atomically(out_dir, "cogvideox", seed, fill)


def build_tiny_ltx(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny ``LTXPipeline`` in ``out_dir`` (about 0.6 MB).

    Transformer: 1 layer, 2 heads of 8, 8 latent channels, caption dim 32. VAE: 8 channels per
    block, patch 4, 8x temporal / 32x spatial compression, per-channel latent mean/std buffers.
    """

    def fill(d: Path) -> None:
        import torch
        from diffusers import (
            AutoencoderKLLTXVideo,
            FlowMatchEulerDiscreteScheduler,
            LTXPipeline,
            LTXVideoTransformer3DModel,
        )

        tokenizer = _train_t5_tokenizer(128)
        text_encoder = _t5_encoder("T5EncoderModel", len(tokenizer), seed)
        with _seeded(seed + 1):
            vae = AutoencoderKLLTXVideo(
                latent_channels=8,
                block_out_channels=(8, 8, 8, 8),
                decoder_block_out_channels=(8, 8, 8, 8),
                layers_per_block=(1, 1, 1, 1, 1),
                decoder_layers_per_block=(1, 1, 1, 1, 1),
                spatio_temporal_scaling=(True, True, True, False),
                decoder_spatio_temporal_scaling=(True, True, True, False),
                patch_size=4,
                patch_size_t=1,
                timestep_conditioning=False,
            )
            with torch.no_grad():
                vae.latents_mean.copy_(torch.linspace(-0.5, 0.5, 8))
                vae.latents_std.copy_(torch.linspace(0.5, 2.0, 8))
        with _seeded(seed + 2):
            transformer = LTXVideoTransformer3DModel(
                in_channels=8,
                out_channels=8,
                patch_size=1,
                patch_size_t=1,
                num_attention_heads=2,
                attention_head_dim=8,
                cross_attention_dim=16,
                num_layers=1,
                caption_channels=_TEXT_DIM,
            )
        # the scheduler of Lightricks/LTX-Video (shift from the token count, 0.95 .. 2.05)
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=1.0,
            use_dynamic_shifting=True,
            base_shift=0.95,
            max_shift=2.05,
            base_image_seq_len=1024,
            max_image_seq_len=4096,
            shift_terminal=0.1,
        )
        pipe = LTXPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )
        pipe.save_pretrained(d)

    return _build_atomically(out_dir, "ltx", seed, fill)


_BUILDERS = {"wan": build_tiny_wan, "cogvideox": build_tiny_cogvideox, "ltx": build_tiny_ltx}


def make_tiny(
    dir: Path | str | None = None,
    force: bool = False,
    families: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Path]:
    """Build the tiny pipelines under ``dir/{wan,cogvideox,ltx}`` (default :func:`default_tiny_root`).

    Complete builds are reused unless ``force``; an interrupted build has no marker and is redone.
    Returns ``{family: path}`` for the families asked for (all by default).
    """
    root = Path(dir).expanduser() if dir is not None else default_tiny_root()
    wanted = list(families) if families else list(TINY_FAMILIES)
    unknown = [f for f in wanted if f not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown tiny model family {unknown[0]!r}; available: {', '.join(TINY_FAMILIES)}")
    paths: dict[str, Path] = {}
    for family in wanted:
        path = (root / family).resolve()
        if force or not is_complete(path, family):
            _BUILDERS[family](path, seed=0)
        paths[family] = path
    return paths


def resolve_t2v_model(ref: str) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts.

    ``tiny://wan`` (``cogvideox``, ``ltx``) names a tiny pipeline under :func:`default_tiny_root`,
    built on first use; ``~`` is expanded in local paths; hub ids pass through unchanged.
    """
    from densecap.errors import ConfigError

    if ref.startswith(TINY_SCHEME):
        name = ref[len(TINY_SCHEME) :]
        if name not in _BUILDERS:
            raise ConfigError(f"model {ref!r}: unknown tiny model {name!r}; available: {', '.join(TINY_FAMILIES)}")
        return str(make_tiny(families=[name])[name])
    expanded = os.path.expanduser(ref)
    if (expanded != ref or ref.startswith((".", "/"))) and not Path(expanded).exists():
        raise ConfigError(f"model path {expanded} does not exist")
    return expanded
