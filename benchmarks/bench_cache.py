"""Time getting one training batch from the latent cache against computing it on the fly.

Both sides produce what a training step consumes: the family-normalised latents (sampled from the
VAE posterior) and the text conditioning, for a batch of one sample, on the CPU.

* on the fly: decode and resize the clip (``VideoTextDataset[i]``), VAE-encode it
  (``spec.encode_video``), text-encode the caption (``spec.encode_prompts``), sample the latents;
* cached: read the sample from the cache (``CachedLatentDataset[i]``, safetensors), stack it
  (``collate_cached``), sample the latents.

Models (random weights, so only the cost is meaningful):

* ``tiny``: the tiny Wan of ``t2v.tiny`` (VAE base_dim 8, z_dim 4; UMT5 d_model 32, 1 layer), what the
  tests and ``configs/prepare/tiny.yaml`` use: its encoders are so cheap that decoding dominates;
* ``small``: a Wan of the real architecture at reduced width (VAE base_dim 32, z_dim 16,
  dim_mult 1,2,4,4, 2 res blocks, i.e. the real Wan2.1 VAE at a third of its width; UMT5 d_model 512,
  4 layers, 8 heads), built here: still far cheaper than the real VAE and UMT5-XXL, so the real
  speed-up is larger than what this measures.

Data: the three clips of ``samples/train/`` (160x90, 20 fps), one sample each (``long_clips: head``),
sampled at 8 fps. Each figure is the median over ``--repeat`` passes over the samples (after one
warm-up pass), divided by the number of samples.

Usage::

    python benchmarks/bench_cache.py
    python benchmarks/bench_cache.py --repeat 5 --write-docs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SECTION = "## Latent caching"


SMALL_TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=48, num_layers=1)


def build_small_wan(out: Path, transformer: dict | None = None) -> Path:
    """A Wan pipeline of reduced width (see the module doc), random weights, seeded;
    ``transformer`` overrides the transformer's size (heads, head dim, ffn dim, layers)."""
    size = {**SMALL_TRANSFORMER, **(transformer or {})}
    from t2v import tiny

    def fill(d: Path) -> None:
        import transformers
        from diffusers import (
            AutoencoderKLWan,
            UniPCMultistepScheduler,
            WanPipeline,
            WanTransformer3DModel,
        )

        tokenizer = tiny._train_t5_tokenizer(512)
        config = transformers.UMT5Config(
            vocab_size=len(tokenizer), d_model=512, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=1,
            num_heads=8, feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0,
        )
        with tiny._seeded(0):
            text_encoder = transformers.UMT5EncoderModel(config).eval()
        with tiny._seeded(1):
            vae = AutoencoderKLWan(base_dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                   temperal_downsample=[False, True, True])
        with tiny._seeded(2):
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=512, freq_dim=32,
                rope_max_seq_len=64, **size,
            )
        scheduler = UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                            use_flow_sigmas=True, flow_shift=3.0)
        WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                    scheduler=scheduler).save_pretrained(d)

    return tiny._build_atomically(out, "wan", 0, fill)


def per_step(fn, n: int, repeat: int) -> float:
    """Median seconds per step of ``fn(i)`` over ``repeat`` passes of ``i in range(n)`` (one warm-up pass)."""
    for i in range(n):
        fn(i)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times)


def measure(name: str, model_path: str, bucket: tuple[int, int, int], repeat: int, work: Path) -> dict:
    import torch

    from t2v.cache import (
        CachedLatentDataset,
        ModelRef,
        PrepareConfig,
        collate_cached,
        prepare_cache,
    )
    from t2v.data import DataConfig, VideoTextDataset, read_samples
    from t2v.families import get_family

    spec = get_family("wan")
    data = DataConfig(path=str(ROOT / "samples" / "train"), buckets=[list(bucket)], fps=8, long_clips="head")
    cfg = PrepareConfig(model=ModelRef(family="wan", id=model_path), data=data, device="cpu", shard_size=64)
    c = spec.load_components(model_path, transformer=False)
    out = work / f"cache-{name}-{'x'.join(map(str, bucket))}"
    t = time.perf_counter()
    result = prepare_cache(cfg, out, components=c, progress=lambda _msg: None)
    prepare_s = time.perf_counter() - t
    assert result.cached == 3 and result.failed == 0, result.summary()

    ds = VideoTextDataset(read_samples(data.path), data)
    cache = CachedLatentDataset(out, family="wan")
    n = len(ds)
    gen = torch.Generator().manual_seed(0)

    def on_the_fly(i: int):
        item = ds[i]
        dist = spec.encode_video(c, item["video"][None])
        cond = spec.encode_prompts(c, [item["caption"]])
        return spec.latents_from_dist(c, dist, gen), cond

    def decode_only(i: int):
        return ds[i]["video"]

    def cached(i: int):
        batch = collate_cached([cache[i]])
        return spec.latents_from_dist(c, {"mean": batch["mean"], "logvar": batch["logvar"]}, gen), batch["cond"]

    fly = per_step(on_the_fly, n, repeat)
    dec = per_step(decode_only, n, repeat)
    hit = per_step(cached, n, repeat)
    ds.close()
    latent = tuple(cache[0]["mean"].shape)
    return {
        "name": name, "bucket": bucket, "latent": latent, "fly": fly, "decode": dec, "cached": hit,
        "ratio": fly / hit, "prepare_s": prepare_s,
        "bytes_per_sample": sum(p.stat().st_size for p in (out / "shards").glob("*.safetensors")) / len(cache),
    }


def render(rows: list[dict], repeat: int, threads: int) -> str:
    import diffusers
    import safetensors
    import torch

    lines = [
        SECTION,
        "",
        "Time to get one training batch (batch size 1: latents sampled from the VAE posterior plus the",
        "text conditioning) from the latent cache (`t2v prepare`, `t2v.cache.CachedLatentDataset`) against",
        "computing it on the fly (decode and resize the clip, VAE-encode it, text-encode the caption),",
        "measured in the same run on the three clips of `samples/train/` (160x90, 20 fps; one sample",
        f"each, 8 fps). Median of {repeat} passes after one warm-up pass, per step; ratio = on the fly / cached.",
        "",
        "Command: `python benchmarks/bench_cache.py --write-docs`",
        "",
        f"Machine: {common.machine(f'torch {torch.__version__} ({threads} threads)', f'diffusers {diffusers.__version__}', f'safetensors {safetensors.__version__}')}.",
        "",
        "| model | bucket (F, H, W) | latent (C, f, h, w) | on the fly (ms) | of which decode (ms) | cached (ms) | ratio | prepare, 3 samples (s) | cache per sample |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    from t2v.cache import nbytes_text

    for r in rows:
        lines.append(
            f"| {r['name']} | {', '.join(map(str, r['bucket']))} | {', '.join(map(str, r['latent']))} | "
            f"{r['fly'] * 1e3:.1f} | {r['decode'] * 1e3:.1f} | {r['cached'] * 1e3:.2f} | {r['ratio']:.0f}x | "
            f"{r['prepare_s']:.2f} | {nbytes_text(r['bytes_per_sample'])} |"
        )
    lines += [
        "",
        "Models: *tiny* is `tiny://wan` (VAE base_dim 8, z_dim 4; UMT5 d_model 32, one layer), the",
        "model of the tests and `configs/prepare/tiny.yaml`; *small* is a Wan of the real architecture at",
        "reduced width built by the script (VAE base_dim 32, z_dim 16, dim_mult 1,2,4,4, two res blocks:",
        "the Wan2.1 VAE at a third of its width; UMT5 d_model 512, 4 layers). Weights are random: only",
        "the cost means anything.",
        "",
        "Reading the figures. A cached step is a safetensors read of the stored tensors (the prompt",
        "embedding is stored without Wan's zero padding and padded back on read) plus the latent sampling",
        "that both sides do, so it barely depends on the models. The on-the-fly step is decoding (the",
        "*decode* column, the same for every model) plus the two encoders: even the tiny UMT5 runs over",
        "512 padded tokens, and with the *small* VAE and text encoder the encoders are nearly all of it.",
        "*cache per sample* counts the shard files (mean, log-variance and the trimmed prompt embedding,",
        "float32); the empty-prompt file is one more, once per cache. The real Wan2.1 VAE (3x wider than",
        "*small*, so about 9x its FLOPs) at 49x480x832 and UMT5-XXL (4096 wide, 24 layers) cost orders of",
        "magnitude more, so on real models the ratio only grows; the cache also means the VAE encoder",
        "and the text encoder (about 11 GB in bf16 for UMT5-XXL) need not be in memory while training.",
        "What caching gives up: one crop per sample (no random-crop augmentation) and a fixed caption per",
        "sample (dropout still works, with the cached empty prompt). Figures vary by +-30 % between runs",
        "on this shared machine.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed passes per measurement (median reported)")
    ap.add_argument("--write-docs", action="store_true", help=f"write the table into docs/benchmarks.md under '{SECTION}'")
    args = ap.parse_args(argv)

    import torch
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    from t2v.tiny import make_tiny

    hf_logging.disable_progress_bar()
    df_logging.set_verbosity_error()
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        work = Path(tmp)
        tiny_path = str(make_tiny(work / "models", families=["wan"])["wan"])
        small_path = str(build_small_wan(work / "models" / "small-wan"))
        for name, path, bucket in [
            ("tiny", tiny_path, (9, 32, 48)),
            ("tiny", tiny_path, (17, 64, 96)),
            ("small", small_path, (17, 64, 96)),
        ]:
            r = measure(name, path, bucket, args.repeat, work)
            rows.append(r)
            print(f"{name} {bucket}: on the fly {r['fly'] * 1e3:.1f} ms (decode {r['decode'] * 1e3:.1f} ms), "
                  f"cached {r['cached'] * 1e3:.2f} ms, ratio {r['ratio']:.1f}x", flush=True)
    text = render(rows, args.repeat, threads)
    print()
    print(text)
    if args.write_docs:
        common.write_section(SECTION, text)
        print(f"wrote {common.DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
