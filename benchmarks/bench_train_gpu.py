"""One LoRA training step at Wan 2.1 T2V 1.3B size on a GPU: step time and peak memory.

A randomly initialised ``WanTransformer3DModel`` with the 1.3B configuration (weights cannot be
downloaded here; step time and memory do not depend on the weight values), bf16, a LoRA on the
attention projections (the family's default targets), one 480x832, 49-frame sample (latents
16 x 13 x 60 x 104, 512 text tokens of width 4096), with and without gradient checkpointing. The
step is the trainer's: the Wan spec's flow-matching inputs, prediction and loss, backward, AdamW.

    python benchmarks/bench_train_gpu.py [--rank 64] [--steps 5] [--write-docs]

Published anchors (other families, 49 frames, batch 1, gradient checkpointing): CogVideoX-2b LoRA
r64 ~13 GB, LTX LoRA r128 ~11 GB, CogVideoX-5b LoRA r128 ~20.7 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "## LoRA step at Wan 1.3B size (GPU)"

# transformer/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)


def step_stats(rank: int, steps: int, checkpointing: bool, frames: int, height: int, width: int, small: bool) -> dict:
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    from t2v.families import get_family
    from t2v.families.base import Components

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = dict(WAN_1_3B)
    if small:  # CPU smoke test of the script itself
        cfg.update(num_layers=1, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, text_dim=32)
    torch.manual_seed(0)
    model = WanTransformer3DModel(**cfg).to(device=device, dtype=dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():  # as from_pretrained(dtype=...) would keep them
        if keep & set(name.split(".")):
            module.float()
    model.requires_grad_(False)
    spec = get_family("wan")
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(spec.lora_target_modules), init_lora_weights=True))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # trainable LoRA weights in fp32, as mixed-precision training keeps them
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    lat_f, lat_h, lat_w = (frames - 1) // 4 + 1, height // 8, width // 8
    gen = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn(1, 16, lat_f, lat_h, lat_w, generator=gen).to(device)
    cond = {"prompt_embeds": torch.randn(1, 512, cfg["text_dim"], generator=gen).to(device)}
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    c = Components(model_id="random-init", transformer=model, scheduler=scheduler)

    def one_step() -> float:
        inputs = spec.training_step_inputs(c, latents, cond, generator=gen)
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
            pred = spec.predict(c, inputs, cond)
        loss = spec.loss(pred, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(2):
        one_step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one_step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    out = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "rank": rank, "checkpointing": checkpointing, "frames": frames, "height": height, "width": width,
        "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 2),
        "total_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "step_s_median": round(sorted(times)[len(times) // 2], 3), "peak_gib": round(peak, 2),
        "torch": torch.__version__,
    }
    model = opt = params = None  # free before emptying the CUDA cache
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--small", action="store_true", help="tiny model (CPU smoke test of this script)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    rows = []
    for ckpt in (True, False):
        try:
            rows.append(step_stats(args.rank, args.steps, ckpt, args.frames, args.height, args.width, args.small))
        except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - GPU only
            rows.append({"checkpointing": ckpt, "error": f"out of memory: {exc}"[:200]})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
