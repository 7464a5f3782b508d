"""t2v.train: the trainer on the tiny Wan pipeline (tiny://wan) and the sample clips (samples/train).

Covered: a LoRA overfitting one batch; resume giving the identical loss sequence (with gradient
accumulation, LoRA dropout, caption dropout, EMA, a warmup + cosine schedule and validation runs in
between); the LoRA loading into a plain WanPipeline (diffusers and ComfyUI layouts); a full fine-tune
loading back with from_pretrained; checkpoint markers and keep-last; a NaN loss; config, shape and
data errors; the latent-cache source giving the same losses as on-the-fly encoding; the CLI; two
processes under accelerate launch (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.errors import CaptionerError, ConfigError
from t2v.data import DataError
from t2v.train import (
    TrainingError,
    find_checkpoint,
    list_checkpoints,
    load_train_config,
    resolved_config,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "train" / "captions.jsonl"
ALL_LINEAR = "lora.target_modules=[to_q,to_k,to_v,to_out.0,proj_out,ffn.net.0.proj,ffn.net.2]"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_paths(t2v_tiny_models):
    return t2v_tiny_models


@pytest.fixture(scope="module")
def tiny_wan(tiny_paths):
    return tiny_paths["wan"]


def _cfg(*overrides: str):
    """The tiny preset, made quiet and quick: absolute data path, no trackers, no validation."""
    base = [f"data.path={SAMPLES}", "logging.log_with=[]", "validation.prompts=[]", "checkpoint.every=null",
            "checkpoint.at_end=false"]
    return load_train_config("tiny", [*base, *overrides])


def _metrics(out: Path) -> dict[int, dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {rec["step"]: rec for rec in map(json.loads, lines)}


def _one_clip(tmp_path: Path) -> Path:
    row = json.loads(SAMPLES.read_text().splitlines()[0])
    row["video"] = str(SAMPLES.parent / row["video"])
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# learning


def test_lora_overfits_one_batch(tiny_wan, tmp_path):
    """One clip, a fixed noise level, the posterior mean: the LoRA memorises it and the loss falls."""
    cfg = _cfg(f"data.path={_one_clip(tmp_path)}", "data.caption_dropout=0", "training.max_steps=60",
               "training.sample_posterior=false", "training.timesteps.sampling=logit_normal",
               "training.timesteps.logit_std=0", "optimizer.lr=3e-2", "optimizer.scheduler=constant",
               "optimizer.warmup_steps=0", "lora.rank=16", "lora.alpha=16", ALL_LINEAR)
    result = train(cfg, tmp_path / "run")
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 60 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, (first, last)
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()


# --------------------------------------------------------------------------------------------------
# resume


RESUME = ("training.max_steps=6", "training.gradient_accumulation_steps=2", "lora.dropout=0.1",
          "data.caption_dropout=0.5", "ema.enabled=true", "ema.decay=0.9", "optimizer.scheduler=cosine",
          "optimizer.warmup_steps=2", "lora.alpha=16", "lora.comfy=true")


@pytest.fixture(scope="module")
def uninterrupted(tiny_wan, tmp_path_factory):
    """6 steps in one go, checkpoints every step (the newest 2 kept), validation at steps 3 and 6,
    tensorboard logging."""
    out = tmp_path_factory.mktemp("train") / "full"
    cfg = _cfg(*RESUME, "checkpoint.every=1", "checkpoint.keep_last=2", "validation.every=3",
               "validation.prompts=[A cockatoo raises its crest.]", "logging.log_with=[tensorboard]")
    result = train(cfg, out)
    return out, result


def test_resume_gives_identical_losses(uninterrupted, tmp_path):
    full_out, full = uninterrupted
    assert sorted(full.losses) == [1, 2, 3, 4, 5, 6]
    out = tmp_path / "split"
    first = train(_cfg(*RESUME, "checkpoint.every=1", "checkpoint.keep_last=2"), out, stop_after_step=3)
    assert first.stopped_early and first.global_step == 3 and first.lora_dir is None
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 3]
    assert not (out / "lora").exists()
    # a crash while saving step 4 left a folder without the marker, and a temporary one
    shutil.copytree(out / "checkpoints" / "step-3", out / "checkpoints" / "step-4")
    (out / "checkpoints" / "step-4" / "COMPLETE").unlink()
    shutil.copytree(out / "checkpoints" / "step-3", out / "checkpoints" / ".tmp-step-5")
    assert find_checkpoint(out, "latest").name == "step-3"

    second = train(_cfg(*RESUME, "checkpoint.every=1", "checkpoint.keep_last=2"), out, resume="latest")
    assert second.resumed_from.name == "step-3"
    assert sorted(second.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert second.losses[step] == pytest.approx(full.losses[step], abs=1e-6), step
    # metrics.jsonl holds one line per step, equal to the uninterrupted run's
    m_full, m_split = _metrics(full_out), _metrics(out)
    assert sorted(m_split) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert m_split[step]["loss"] == pytest.approx(m_full[step]["loss"], abs=1e-6)
        assert m_split[step]["lr"] == pytest.approx(m_full[step]["lr"], abs=1e-12)
    # the same final weights (EMA ones exported)
    from safetensors.torch import load_file

    a = load_file(str(full_out / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    # the unmarked step-4 was replaced by a complete one; leftovers gone; the newest two kept
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [5, 6]
    assert not (out / "checkpoints" / ".tmp-step-5").exists()


def test_run_outputs(uninterrupted):
    out, _ = uninterrupted
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [5, 6]  # keep_last 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-5", "step-6"]
    ckpt = out / "checkpoints" / "step-6"
    assert {"COMPLETE", "trainable.safetensors", "optimizer.pt", "scheduler.pt", "ema.safetensors", "state.json",
            "rng-0.safetensors", "rng-0.json"} <= {p.name for p in ckpt.iterdir()}
    state = json.loads((ckpt / "state.json").read_text())
    assert state["global_step"] == 6 and state["sampler"]["epoch"] == 4  # 12 batches of 3 samples
    rec = _metrics(out)[6]
    assert set(rec) >= {"step", "loss", "lr", "grad_norm", "step_time", "epoch"}
    # validation clips: 9 frames of 32 x 32
    import imageio.v2 as imageio

    for step in (3, 6):
        clips = sorted((out / "validation" / f"step-{step}").glob("*.mp4"))
        assert len(clips) == 1
        reader = imageio.get_reader(str(clips[0]))
        assert reader.count_frames() == 9 and tuple(reader.get_meta_data()["size"]) == (32, 32)
        reader.close()
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    base = json.loads((out / "base_model.json").read_text())
    assert base["model_id"] == "tiny://wan" and base["family"] == "wan" and base["mode"] == "lora"
    card = (out / "README.md").read_text()
    assert "base_model: tiny://wan" in card and "samples: 3" in card and "9x32x32: 3" in card
    assert "caption_dropout: 0.5" in card
    resolved = load_train_config(str(out / "train_config.yaml"))
    assert resolved.training.max_steps == 6 and resolved.ema.enabled


def test_lora_loads_into_plain_wan_pipeline(uninterrupted, tiny_wan):
    from diffusers import WanPipeline

    out, _ = uninterrupted

    def generate(lora: Path | None = None, weight_name: str | None = None) -> np.ndarray:
        pipe = WanPipeline.from_pretrained(str(tiny_wan))
        pipe.set_progress_bar_config(disable=True)
        if lora is not None:
            pipe.load_lora_weights(str(lora), weight_name=weight_name)
        return pipe(prompt="A cockatoo raises its crest.", num_frames=9, height=32, width=32, num_inference_steps=2,
                    guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="np").frames[0]

    base = generate()
    with_lora = generate(out / "lora")
    assert np.abs(with_lora - base).max() > 1e-4
    # ComfyUI layout (alpha/rank = 2 folded into lora_B) gives the same model as diffusers' (alpha in metadata)
    comfy = generate(out / "lora", "lora_comfyui.safetensors")
    np.testing.assert_allclose(comfy, with_lora, atol=1e-5)


def test_base_model_json_names_a_base_plain_diffusers_loads(uninterrupted, tiny_wan):
    """base_model.json keeps the id as given (tiny://wan) and names what DiffusionPipeline loads; the
    run's LoRA applies to that base with nothing of this project's."""
    from diffusers import DiffusionPipeline

    out, _ = uninterrupted
    base = json.loads((out / "base_model.json").read_text())
    assert base["model_id"] == "tiny://wan"
    assert Path(base["pretrained_model_name_or_path"]).is_absolute()
    assert Path(base["pretrained_model_name_or_path"]).resolve() == Path(tiny_wan).resolve()
    pipe = DiffusionPipeline.from_pretrained(base["pretrained_model_name_or_path"], revision=base["revision"])
    assert type(pipe).__name__ == base["pipeline_class"]
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="A cockatoo raises its crest.", num_frames=9, height=32, width=32, num_inference_steps=2,
                  guidance_scale=1.0, output_type="np")
    plain = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames[0]
    pipe.load_lora_weights(str(out / "lora"))
    tuned = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames[0]
    assert np.abs(tuned - plain).max() > 1e-4
    assert base["pretrained_model_name_or_path"] in (out / "README.md").read_text()  # the card's snippet runs


@pytest.mark.parametrize("family", ["cogvideox", "ltx"])
def test_other_families_train_and_load(tiny_paths, tmp_path, family):
    """The same trainer on CogVideoX (DDPM v-prediction) and LTX-Video (packed tokens): the LoRA loads
    into the family's diffusers pipeline and changes its output (LTX: also the ComfyUI layout)."""
    import diffusers

    out = tmp_path / family
    cfg = _cfg(f"model.family={family}", f"model.id=tiny://{family}", "training.max_steps=2", "optimizer.lr=1e-2",
               "lora.alpha=16", f"lora.comfy={'true' if family == 'ltx' else 'false'}")
    result = train(cfg, out)
    assert all(np.isfinite(v) for v in result.losses.values())
    cls = getattr(diffusers, {"cogvideox": "CogVideoXPipeline", "ltx": "LTXPipeline"}[family])

    def generate(weight_name: str | None = None, lora: bool = True) -> np.ndarray:
        pipe = cls.from_pretrained(str(tiny_paths[family]))
        pipe.set_progress_bar_config(disable=True)
        if lora:
            pipe.load_lora_weights(str(out / "lora"), weight_name=weight_name)
        return pipe(prompt="A cockatoo.", num_frames=9, height=32, width=32, num_inference_steps=2,
                    guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="np").frames[0]

    with_lora = generate()
    assert np.abs(with_lora - generate(lora=False)).max() > 1e-4
    if family == "ltx":
        np.testing.assert_allclose(generate("lora_comfyui.safetensors"), with_lora, atol=1e-5)
    else:
        with pytest.raises(TrainingError, match="lora: cogvideox: no ComfyUI LoRA layout"):
            train(_cfg(f"model.family={family}", f"model.id=tiny://{family}", "training.max_steps=1",
                       "lora.comfy=true"), tmp_path / "comfy")


# --------------------------------------------------------------------------------------------------
# full fine-tuning, NaN, errors


def test_full_finetune_saves_transformer(tiny_wan, tmp_path):
    from diffusers import WanTransformer3DModel

    out = tmp_path / "full"
    result = train(_cfg("training.mode=full", "training.max_steps=2", "training.gradient_checkpointing=true",
                        "optimizer.lr=1e-2"), out)
    assert result.transformer_dir == out / "transformer" and not (out / "lora").exists()
    tuned = WanTransformer3DModel.from_pretrained(str(out / "transformer"))
    base = WanTransformer3DModel.from_pretrained(str(tiny_wan), subfolder="transformer")
    t, b = dict(tuned.named_parameters()), dict(base.named_parameters())
    assert t.keys() == b.keys()
    assert max((t[k] - b[k]).abs().max().item() for k in t) > 1e-4
    assert json.loads((out / "base_model.json").read_text())["output"] == "transformer"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_wan, tmp_path, monkeypatch):
    from t2v.families.wan import WanSpec

    real = WanSpec.loss
    calls = {"n": 0}

    def loss(self, pred, inputs):
        calls["n"] += 1
        value = real(self, pred, inputs)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(WanSpec, "loss", loss)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"step 5: the loss is nan") as exc:
        train(_cfg("training.max_steps=10", "checkpoint.every=2", "checkpoint.at_end=true"), out)
    assert "step-4" in str(exc.value)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 4]
    assert not any(p.name.startswith(".tmp") for p in (out / "checkpoints").iterdir())
    assert not (out / "lora").exists()
    assert sorted(_metrics(out)) == [1, 2, 3, 4]


def test_config_errors(tiny_wan, tmp_path):
    with pytest.raises(ConfigError, match=r"training.max_stepz: unknown key"):
        _cfg("training.max_stepz=3")
    with pytest.raises(ConfigError, match=r"training.max_steps: .*greater than or equal to 1"):
        _cfg("training.max_steps=0")
    with pytest.raises(ConfigError, match=r"optimizer.scheduler: got 'cosyne'; allowed"):
        _cfg("optimizer.scheduler=cosyne")
    with pytest.raises(ConfigError, match=r"data.path .* or data.cache_dir"):
        _cfg("data.path=null")
    # a bucket the family cannot take fails before anything is loaded
    with pytest.raises(TrainingError, match=r"data bucket \(10, 32, 32\): wan: num_frames must be 4\*k \+ 1"):
        train(_cfg("data.buckets=[[10, 32, 32]]"), tmp_path / "a")
    with pytest.raises(TrainingError, match=r"validation .*height must be a positive multiple of 16"):
        train(_cfg("validation.prompts=[x]", "validation.height=40", "validation.num_frames=9"), tmp_path / "b")
    if not _has("wandb"):
        with pytest.raises(TrainingError, match=r"log_with: wandb needs the wandb package"):
            train(_cfg("logging.log_with=wandb"), tmp_path / "w")
    if not _has("bitsandbytes"):
        with pytest.raises(TrainingError, match=r"adamw8bit needs bitsandbytes \(pip install bitsandbytes\)"):
            train(_cfg("optimizer.name=adamw8bit", "training.max_steps=1"), tmp_path / "c")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_empty_dataset_and_existing_run_errors(tiny_wan, tmp_path):
    # every clip (3 s) is too short for 81 frames at 8 fps
    with pytest.raises(DataError, match=r"all 3 clips were too short for the smallest bucket \(81 frames at 8 fps"):
        train(_cfg("data.buckets=[[81, 32, 32]]"), tmp_path / "empty")
    # not enough samples for one batch
    with pytest.raises(TrainingError, match=r"3 samples: not enough for one batch of 4"):
        train(_cfg("training.batch_size=4", "data.drop_last=true"), tmp_path / "small")
    # a fresh run into a folder that holds a run's checkpoints
    out = tmp_path / "done"
    train(_cfg("training.max_steps=1", "checkpoint.at_end=true"), out)
    with pytest.raises(TrainingError, match=r"already holds checkpoints.*--resume latest"):
        train(_cfg("training.max_steps=1"), out)
    # resuming with another LoRA rank
    with pytest.raises(TrainingError, match=r"lora.rank: 8 then, 4 now"):
        train(_cfg("training.max_steps=2", "lora.rank=4"), out, resume="latest")
    # --resume latest with nothing saved yet starts from scratch
    fresh = train(_cfg("training.max_steps=1"), tmp_path / "fresh", resume="latest")
    assert fresh.resumed_from is None and fresh.global_step == 1


# --------------------------------------------------------------------------------------------------
# the latent-cache source


def test_cache_source_matches_on_the_fly_encoding(tiny_wan, tmp_path):
    """Training from a t2v prepare cache (no VAE / text encoder loaded) gives the losses of on-the-fly
    encoding: same posteriors, conditioning, empty-prompt conditioning for dropped captions, order."""
    from t2v.cache import PrepareConfig, prepare_cache

    cfg = _cfg("training.max_steps=4", "data.caption_dropout=0.5")
    data = {k: v for k, v in resolved_config(cfg)["data"].items() if k not in ("cache_dir", "num_workers", "drop_last")}
    prep = PrepareConfig.model_validate({"model": {"family": "wan", "id": "tiny://wan"}, "data": data})
    prepare_cache(prep, tmp_path / "cache")
    videos = train(cfg, tmp_path / "videos")
    cached = train(_cfg("training.max_steps=4", "data.caption_dropout=0.5", f"data.cache_dir={tmp_path / 'cache'}",
                        "validation.prompts=[A cockatoo.]", "validation.num_frames=9", "validation.height=32",
                        "validation.width=32"), tmp_path / "cached")
    assert sorted(cached.losses) == [1, 2, 3, 4]
    for step in cached.losses:
        assert cached.losses[step] == pytest.approx(videos.losses[step], abs=1e-5), step
    assert len(list((tmp_path / "cached" / "validation" / "step-4").glob("*.mp4"))) == 1  # encoders loaded for it
    card = (tmp_path / "cached" / "README.md").read_text()
    assert "latent cache" in card


# --------------------------------------------------------------------------------------------------
# command line


def test_cli_train_and_errors(tiny_wan, tmp_path):
    from click.testing import CliRunner

    from t2v.cli import cli

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["train", "--config", "tiny", "--out", str(out), "--set", f"data.path={SAMPLES}",
            "--set", "logging.log_with=[]", "--set", "validation.prompts=[]", "--set", "training.max_steps=2",
            "--set", "checkpoint.every=1"]
    res = runner.invoke(cli, [*args, "--stop-after-step", "1"])
    assert res.exit_code == 0, res.output
    assert "stopped after step 1" in res.output
    res = runner.invoke(cli, [*args, "--resume", "latest"])
    assert res.exit_code == 0, res.output
    assert "trained 2 steps" in res.output and (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    res = runner.invoke(cli, ["train", "--config", "tiny", "--out", str(tmp_path / "x"), "--set", "lora.rnk=4"])
    assert res.exit_code == 1 and "lora.rnk: unknown key" in res.output
    res = runner.invoke(cli, ["train", "--out", str(tmp_path / "y")])
    assert res.exit_code == 1 and "--config is required" in res.output


# --------------------------------------------------------------------------------------------------
# several processes


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(tiny_wan, tmp_path):
    """accelerate launch --num_processes 2 (torchrun; gloo on CPU): both processes train on their share of
    the batches, one LoRA is saved, and a run resumed from a checkpoint of another folder (--resume PATH)
    continues with the same losses. Skipped when the launcher cannot start processes here."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("the accelerate launcher is not installed next to this python")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    def launch(out: Path, *extra: str) -> subprocess.CompletedProcess:
        cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               "-m", "t2v.train", "--config", "tiny", "--out", str(out), "--set", f"data.path={SAMPLES}",
               "--set", "logging.log_with=[]", "--set", "validation.every=null", "--set", "training.max_steps=4",
               "--set", "checkpoint.every=2", "--set", "checkpoint.keep_last=null",
               "--set", "validation.prompts=[A cockatoo.]", *extra]
        return subprocess.run(cmd, check=False, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=300)

    out = tmp_path / "ddp"
    proc = launch(out)
    if proc.returncode != 0 and not (out / "train_config.yaml").exists():
        pytest.skip(f"accelerate could not start 2 CPU processes here: {proc.stderr[-800:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    ckpt = out / "checkpoints" / "step-2"
    assert {"rng-0.safetensors", "rng-1.safetensors", "COMPLETE"} <= {p.name for p in ckpt.iterdir()}
    assert json.loads((ckpt / "state.json").read_text())["world_size"] == 2
    full = _metrics(out)
    assert sorted(full) == [1, 2, 3, 4]
    assert len(list((out / "validation" / "step-4").glob("*.mp4"))) == 1

    resumed_out = tmp_path / "ddp-resumed"
    proc = launch(resumed_out, "--resume", str(ckpt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = _metrics(resumed_out)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], abs=1e-6), step

    # a resume with another number of processes is refused with a clear message
    with pytest.raises(TrainingError, match=r"saved by 2 processes, this run has 1"):
        train(_cfg("training.max_steps=5"), out, resume="latest")


def test_errors_are_captioner_errors():
    assert issubclass(TrainingError, CaptionerError)


def test_validation_prompts_are_expanded_like_at_inference(tiny_wan, tmp_path):
    """validation.expand: the short validation prompts are expanded (loopback server) before the video model
    loads; the clips are generated from the expansions, the files keep the short prompts' names."""
    try:
        from chat_server import ChatServer
    except ImportError:  # pragma: no cover
        from tests.chat_server import ChatServer

    caption = ("A white cockatoo perches on a wooden beam in a bright room and slowly raises its pale yellow "
               "crest, then turns its head towards the window. The camera holds a static close-up.")
    with ChatServer(responder=lambda body: caption) as server:
        ecfg = tmp_path / "expand.yaml"
        ecfg.write_text(f"expander:\n  type: openai\n  model: m\n  base_url: {server.base_url}\n  max_retries: 0\n"
                        f"cache_dir: {tmp_path / 'cache'}\nexamples:\n  k: 0\nchecks:\n  min_words: 10\n")
        out = tmp_path / "run"
        train(_cfg("training.max_steps=1", "validation.prompts=[A cockatoo raises its crest.]",
                   f"validation.expand={json.dumps(str(ecfg))}", "validation.num_frames=9", "validation.height=32",
                   "validation.width=32", "validation.num_inference_steps=1"), out)
        assert server.request_count == 1
    expansions = json.loads((out / "validation" / "expansions.json").read_text())
    assert expansions[0]["status"] == "expanded" and expansions[0]["max_tokens"] == 512
    record = json.loads((out / "validation" / "step-1" / "prompts.json").read_text())
    assert record["prompts"] == ["A cockatoo raises its crest."] and record["pipeline_prompts"] == [caption]
    assert [p.name for p in (out / "validation" / "step-1").glob("*.mp4")] == ["00-a-cockatoo-raises-its-crest.mp4"]
