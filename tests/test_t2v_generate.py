"""t2v.generate and ``t2v generate``: videos from the tiny pipelines (tiny://wan, cogvideox, ltx).

Covered: frames equal to a plain diffusers pipeline call with the same seed and settings (the three
families; with a LoRA, at a LoRA scale, from a trainer run folder, with a fine-tuned transformer);
the sidecar's content and the mp4; resuming a prompt list (skip, redo of an unfinished video, the
mismatch error, overwrite); prompt expansion (given, or through a stand-in t2v.expansion.expand_for_generation); the
presets; the CLI; bad inputs failing before any model is loaded, with messages naming the problem.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.errors import CaptionerError, ConfigError
from t2v import generate as G
from t2v.generate import (
    FAMILY_DEFAULTS,
    GenerateError,
    generate_videos,
    load_generate_config,
    read_prompts,
    resolve_model,
    resolved_settings,
)
from t2v.videoio import write_mp4

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = {"wan": "WanPipeline", "cogvideox": "CogVideoXPipeline", "ltx": "LTXPipeline"}
PROMPT = "A white cockatoo raises its crest."

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(t2v_tiny_models):
    return t2v_tiny_models


def _cfg(*overrides: str):
    return load_generate_config("tiny", list(overrides))


def _family(family: str) -> tuple[str, ...]:
    return (f"model.family={family}", f"model.id=tiny://{family}")


def _plain(tiny, family: str, prompt: str, *, lora: Path | None = None, scale: float | None = None,
           transformer: Path | None = None, seed: int = 0) -> np.ndarray:
    """The same video from a plain diffusers pipeline (the tiny preset's settings)."""
    import diffusers

    extra = {}
    if transformer is not None:
        extra["transformer"] = diffusers.WanTransformer3DModel.from_pretrained(str(transformer))
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(str(tiny[family]), **extra)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="x")
        if scale is not None:
            pipe.set_adapters(["x"], adapter_weights=[scale])
    kw = {"frame_rate": 8.0} if family == "ltx" else {}
    return pipe(prompt=prompt, num_frames=9, height=32, width=32, num_inference_steps=2, guidance_scale=5.0,
                generator=torch.Generator().manual_seed(seed), output_type="np", **kw).frames[0]


@pytest.fixture()
def no_loading(monkeypatch):
    """Fail the test if a model gets loaded."""

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(G, "load_pipeline", refuse)


@pytest.fixture(scope="module")
def lora_dir(tiny, tmp_path_factory) -> Path:
    """A LoRA on the tiny Wan (rank 4, random lora_B), saved as the trainer saves it (t2v.lora.save_lora)."""
    from diffusers import WanTransformer3DModel

    from t2v.families import get_family
    from t2v.lora import add_lora, save_lora

    spec = get_family("wan")
    model = WanTransformer3DModel.from_pretrained(str(tiny["wan"]), subfolder="transformer")
    add_lora(model, rank=4, alpha=4, target_modules=list(spec.lora_target_modules))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return save_lora(tmp_path_factory.mktemp("lora") / "lora", model, spec)


# --------------------------------------------------------------------------------------------------
# the same frames as diffusers


@pytest.mark.parametrize("family", ["wan", "cogvideox", "ltx"])
def test_frames_equal_plain_diffusers(tiny, tmp_path, family):
    videos = generate_videos(_cfg(*_family(family)), [PROMPT, "A cat."], tmp_path)
    assert [v.skipped for v in videos] == [False, False]
    assert videos[0].frames.shape == (9, 32, 32, 3)
    assert np.array_equal(videos[0].frames, _plain(tiny, family, PROMPT))
    assert np.array_equal(videos[1].frames, _plain(tiny, family, "A cat."))  # the same seed for every prompt
    assert videos[0].record["settings"]["extra_call_kwargs"] == ({"frame_rate": 8.0} if family == "ltx" else {})


def test_lora_scale_and_file(tiny, lora_dir, tmp_path):
    base = _plain(tiny, "wan", PROMPT)
    (v,) = generate_videos(_cfg(f"model.lora={lora_dir}"), [PROMPT], tmp_path / "a")
    assert np.abs(v.frames - base).max() > 1e-3
    assert np.array_equal(v.frames, _plain(tiny, "wan", PROMPT, lora=lora_dir))
    file = lora_dir / "pytorch_lora_weights.safetensors"
    assert v.record["lora"] == {"path": str(file.resolve()), "scale": 1.0,
                                "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    # the file itself, at half weight: diffusers' set_adapters at 0.5; at weight 0: the base model
    (half,) = generate_videos(_cfg(f"model.lora={file}", "model.lora_scale=0.5"), [PROMPT], tmp_path / "b")
    assert np.array_equal(half.frames, _plain(tiny, "wan", PROMPT, lora=lora_dir, scale=0.5))
    (zero,) = generate_videos(_cfg(f"model.lora={file}", "model.lora_scale=0"), [PROMPT], tmp_path / "c")
    assert np.array_equal(zero.frames, base)


def test_trainer_run_folders(tiny, tmp_path):
    """model.run: a LoRA run trained by t2v.train, and a full fine-tune's transformer folder."""
    from diffusers import WanTransformer3DModel

    from t2v.families import get_family
    from t2v.train import _write_base_model, load_train_config, train

    samples = ROOT / "samples" / "train" / "captions.jsonl"
    tcfg = load_train_config("tiny", [f"data.path={samples}", "logging.log_with=[]", "validation.prompts=[]",
                                      "checkpoint.every=null", "checkpoint.at_end=false", "training.max_steps=1",
                                      "optimizer.lr=1e-2", "optimizer.warmup_steps=0", "lora.alpha=16"])
    run = tmp_path / "lora-run"
    train(tcfg, run)
    (v,) = generate_videos(_cfg("model.family=null", "model.id=null", f"model.run={run}"), [PROMPT], tmp_path / "a")
    assert np.array_equal(v.frames, _plain(tiny, "wan", PROMPT, lora=run / "lora"))
    assert np.abs(v.frames - _plain(tiny, "wan", PROMPT)).max() > 1e-4
    assert v.record["model"]["run"] == str(run.resolve()) and v.record["model"]["id"] == "tiny://wan"

    # full mode: a transformer folder (perturbed weights), alone and as a run
    full = tmp_path / "full-run"
    model = WanTransformer3DModel.from_pretrained(str(tiny["wan"]), subfolder="transformer")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(str(full / "transformer"))
    _write_base_model(full, load_train_config("tiny", ["training.mode=full"]), get_family("wan"), "tiny://wan")
    expected = _plain(tiny, "wan", PROMPT, transformer=full / "transformer")
    assert np.abs(expected - _plain(tiny, "wan", PROMPT)).max() > 1e-3
    (t,) = generate_videos(_cfg(f"model.transformer={full / 'transformer'}"), [PROMPT], tmp_path / "b")
    assert np.array_equal(t.frames, expected)
    assert t.record["transformer"] == str((full / "transformer").resolve()) and t.record["lora"] is None
    (r,) = generate_videos(_cfg("model.family=null", "model.id=null", f"model.run={full}"), [PROMPT], tmp_path / "c")
    assert np.array_equal(r.frames, expected)

    # the run's base model is authoritative: a conflicting family is refused, naming base_model.json
    with pytest.raises(GenerateError, match=r"model.family is 'ltx' but the run was trained from 'wan' \(.*base_model"):
        generate_videos(_cfg("model.family=ltx", "model.id=null", f"model.run={run}"), [PROMPT], tmp_path / "d")


# --------------------------------------------------------------------------------------------------
# outputs and resuming


def _decode(path: Path) -> np.ndarray:
    """All frames of a video file (PyAV), (F, H, W, 3) uint8."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_sidecar_mp4_and_resume(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    cfg = _cfg("negative_prompt=blurry")
    first = generate_videos(cfg, [PROMPT, "A cat."], out)
    v = first[0]
    assert v.path == out / "000-a-white-cockatoo-raises-its-crest.mp4"
    assert v.sidecar == out / "000-a-white-cockatoo-raises-its-crest.json"
    rec = json.loads(v.sidecar.read_text())
    assert rec == v.record
    assert rec["prompt"] == rec["pipeline_prompt"] == PROMPT and rec["expansion"] is None
    assert rec["seed"] == 0 and rec["generator_device"] == "cpu"
    assert rec["model"]["family"] == "wan" and rec["model"]["id"] == "tiny://wan" and rec["model"]["revision"] is None
    assert rec["model"]["local_path"] == str(Path(tiny["wan"]).resolve())
    assert rec["lora"] is None and rec["transformer"] is None
    assert rec["settings"] == resolved_settings(cfg, "wan")
    assert rec["settings"]["num_inference_steps"] == 2 and rec["settings"]["guidance_scale"] == 5.0
    assert rec["negative_prompt"] == "blurry" and rec["frames"] == 9 and rec["fps"] == 8.0
    assert rec["duration_s"] == pytest.approx(9 / 8) and rec["seconds"] > 0 and rec["file"] == v.path.name
    assert rec["versions"]["torch"] == torch.__version__.split("+")[0] or rec["versions"]["torch"] == torch.__version__
    assert rec["versions"]["diffusers"] and rec["prompt_tokens"] > 0 and rec["truncated"] is False
    decoded = _decode(v.path)
    assert decoded.shape == (9, 32, 32, 3)
    assert np.abs(decoded.astype(float) - v.frames * 255).mean() < 20  # lossy, but the same video
    assert not list(out.glob(".*"))  # no temporary files left

    # resume: nothing to do, nothing loaded
    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(G, "load_pipeline", refuse)
    again = generate_videos(cfg, [PROMPT, "A cat."], out)
    assert [x.skipped for x in again] == [True, True] and again[0].record == rec and again[0].frames is None
    monkeypatch.undo()
    # an unfinished video (no sidecar) is made again, the finished one kept
    mtime = first[0].path.stat().st_mtime_ns
    first[1].sidecar.unlink()
    redo = generate_videos(cfg, [PROMPT, "A cat."], out)
    assert [x.skipped for x in redo] == [True, False]
    assert np.array_equal(redo[1].frames, first[1].frames) and first[0].path.stat().st_mtime_ns == mtime
    # other settings: an error naming the file and what differs; overwrite replaces
    with pytest.raises(GenerateError, match=r"000-a-white-cockatoo-raises-its-crest.json: holds a video generated "
                                            r"with other settings \(seed: 0 then, 1 now\)"):
        generate_videos(_cfg("negative_prompt=blurry", "seed=1"), [PROMPT], out)
    with pytest.raises(GenerateError, match=r"settings.negative_prompt: 'blurry' then, None now"):
        generate_videos(_cfg(), [PROMPT], out)
    over = generate_videos(_cfg("negative_prompt=blurry", "seed=1", "overwrite=true"), [PROMPT], out)
    assert not over[0].skipped and json.loads(over[0].sidecar.read_text())["seed"] == 1
    # settings that change how, not what, are not compared
    assert generate_videos(_cfg("negative_prompt=blurry", "seed=1", "vae_slicing=true"), [PROMPT], out)[0].skipped


def test_expansions(tiny, tmp_path, monkeypatch):
    # given by the caller: fed to the pipeline, recorded whole
    exp = [{"text": "A white cockatoo slowly raises its yellow crest.", "model": "x"}]
    (v,) = generate_videos(_cfg(), [PROMPT], tmp_path / "given", expansions=exp)
    assert v.record["expansion"] == exp[0] and v.record["pipeline_prompt"] == exp[0]["text"]
    assert v.record["prompt"] == PROMPT
    assert np.array_equal(v.frames, _plain(tiny, "wan", exp[0]["text"]))
    with pytest.raises(GenerateError, match=r"expansions: 1 expansions for 2 prompts"):
        generate_videos(_cfg(), [PROMPT, "b"], tmp_path / "x", expansions=exp)
    with pytest.raises(GenerateError, match=r"expansion 0 must be a dict with a non-empty \"text\""):
        generate_videos(_cfg(), [PROMPT], tmp_path / "x", expansions=[{"prompt": "no text"}])

    # cfg.expand: t2v.expansion.expand_for_generation, called for the prompts not done yet
    calls = []
    monkeypatch.setattr("t2v.expansion.expand_for_generation", _fake_expander(calls))
    out = tmp_path / "expanded"
    cfg = _cfg("expand=tiny")
    generate_videos(cfg, [PROMPT], out)
    videos = generate_videos(cfg, [PROMPT, "A cat."], out)
    assert calls == [("tiny", [PROMPT], "wan", "tiny://wan"), ("tiny", ["A cat."], "wan", "tiny://wan")]
    assert [x.skipped for x in videos] == [True, False]
    assert videos[1].record["pipeline_prompt"] == "A cat. In detail." and videos[1].record["settings"]["expand"] == "tiny"
    assert videos[1].record["expansion"]["config"] == "tiny"


def _fake_expander(calls: list):
    """A stand-in for t2v.expansion.expand_for_generation: appends ' In detail.' and records its calls."""

    def expand_for_generation(config_ref, prompts, *, family, model_id, overrides=(), revision=None):
        calls.append((config_ref, list(prompts), family, model_id))
        return [{"text": f"{p} In detail.", "config": config_ref} for p in prompts]

    return expand_for_generation


def test_write_mp4(tmp_path):
    import imageio.v2 as imageio

    frames = np.linspace(0, 1, 5 * 16 * 16 * 3, dtype=np.float32).reshape(5, 16, 16, 3)
    path = write_mp4(tmp_path / "a.mp4", frames, 8)
    write_mp4(tmp_path / "b.mp4", (frames * 255).round().astype(np.uint8), 8)
    for p in (path, tmp_path / "b.mp4"):
        reader = imageio.get_reader(str(p))
        assert reader.count_frames() == 5 and reader.get_meta_data()["fps"] == 8
        reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]
    with pytest.raises(ValueError, match=r"expected frames of shape \(frames, height, width, 3\)"):
        write_mp4(tmp_path / "c.mp4", frames[..., 0], 8)


# --------------------------------------------------------------------------------------------------
# presets and the command line


@pytest.mark.parametrize("preset", ["wan", "cogvideox", "ltx"])
def test_real_presets(preset):
    """The real presets load, name the family's default model, fit its shape rules and use its authors'
    settings (those of FAMILY_DEFAULTS)."""
    from t2v.families import get_family

    cfg = load_generate_config(preset)
    spec = get_family(cfg.model.family)
    assert cfg.model.family == preset and cfg.model.id == spec.default_model_id
    s = resolved_settings(cfg, preset)
    spec.check_shape(s["num_frames"], s["height"], s["width"])
    assert {k: s[k] for k in FAMILY_DEFAULTS[preset]} == FAMILY_DEFAULTS[preset]
    assert cfg.device == "auto" and cfg.dtype in ("bfloat16", "float16")


def test_cli(tiny, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from t2v.cli import cli

    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(cli, ["generate", "--config", "tiny", "--prompt", PROMPT, "--prompt", "A cat.",
                              "--out", str(out), "--seed", "3", "--negative", "blurry: low quality"])
    assert res.exit_code == 0, res.output
    # quiet by default: no library logs, warnings or weight-loading bars (the denoising bar stays)
    noise = [line for line in res.stderr.splitlines() if "Loading" in line or line.startswith(("INFO", "WARNING"))]
    assert not noise, noise
    mp4, sidecar = out / "000-a-white-cockatoo-raises-its-crest.mp4", out / "000-a-white-cockatoo-raises-its-crest.json"
    assert f"wrote {mp4} (sidecar {sidecar})" in res.stdout and "001-a-cat.mp4" in res.stdout
    rec = json.loads(sidecar.read_text())
    assert rec["seed"] == 3 and rec["negative_prompt"] == "blurry: low quality"
    # a prompts file, resumed: the first two are kept
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# my prompts\n{PROMPT}\n\nA cat.\nA dog.\n")
    res = runner.invoke(cli, ["generate", "--config", "tiny", "--prompts", str(prompts), "--out", str(out),
                              "--seed", "3", "--negative", "blurry: low quality"])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("skipped ") == 2 and "wrote " in res.stdout and (out / "002-a-dog.json").is_file()
    # a changed setting is refused, naming the file
    res = runner.invoke(cli, ["generate", "--config", "tiny", "--prompts", str(prompts), "--out", str(out)])
    assert res.exit_code == 1 and "000-a-white-cockatoo-raises-its-crest.json: holds a video generated" in res.stderr
    # expansion through t2v.expansion, a .jsonl prompts file, and the size flags
    calls = []
    monkeypatch.setattr("t2v.expansion.expand_for_generation", _fake_expander(calls))
    jl = tmp_path / "prompts.jsonl"
    jl.write_text(json.dumps({"prompt": "A cat."}) + "\n")
    res = runner.invoke(cli, ["generate", "--config", "tiny", "--prompts", str(jl), "--out", str(tmp_path / "e"),
                              "--expand-config", "my-expander", "--frames", "5", "--height", "16", "--width", "48"])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "e" / "000-a-cat.json").read_text())
    assert rec["pipeline_prompt"] == "A cat. In detail." and rec["size"] == [16, 48] and rec["frames"] == 5
    assert calls == [("my-expander", ["A cat."], "wan", "tiny://wan")]
    res = runner.invoke(cli, ["generate", "--config", "tiny", "--prompt", "x", "--out", str(tmp_path / "f"), "--expand"])
    assert res.exit_code == 0, res.output
    assert calls[-1][0] == "default"


def test_cli_errors(tiny, tmp_path):
    from click.testing import CliRunner

    from t2v.cli import cli

    runner = CliRunner()
    base = ["generate", "--config", "tiny", "--out", str(tmp_path / "o")]
    res = runner.invoke(cli, [*base])
    assert res.exit_code == 1 and "give prompts with --prompt TEXT" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    res = runner.invoke(cli, [*base, "--prompts", str(bad)])
    assert res.exit_code == 1 and f"error: {bad}:2: \"prompt\" must be a non-empty string" in res.stderr
    res = runner.invoke(cli, [*base, "--prompt", "x", "--attention", "flashy"])
    assert res.exit_code == 1 and "attention_backend: Value error, unknown attention backend 'flashy'" in res.stderr
    res = runner.invoke(cli, [*base, "--prompt", "x", "--frames", "10"])
    assert res.exit_code == 1 and "wan: num_frames must be 4*k + 1" in res.stderr
    res = runner.invoke(cli, ["generate", "--prompt", "x"])
    assert res.exit_code == 1 and "give --config" in res.stderr
    # --debug before or after the subcommand: the error is raised (a traceback) instead of one line
    for args in (["--debug", "generate", "--prompt", "x"], ["generate", "--prompt", "x", "--debug"]):
        res = runner.invoke(cli, args)
        assert isinstance(res.exception, CaptionerError) and "error:" not in res.stderr, args
    res = runner.invoke(cli, [*base, "--prompt", "x", "--run", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "model.run: " in res.stderr and "is not a folder" in res.stderr


# --------------------------------------------------------------------------------------------------
# bad inputs, found before loading


def test_bad_inputs(tiny, lora_dir, tmp_path, no_loading):
    out = tmp_path / "o"

    def fails(match: str, *overrides: str, exc=GenerateError):
        with pytest.raises(exc, match=match):
            generate_videos(_cfg(*overrides), [PROMPT], out)

    fails(r"video shape \(10 frames, 32x32\): wan: num_frames must be 4\*k \+ 1 .*got 10; e.g. 9 or 13",
          "num_frames=10")
    fails(r"video shape \(9 frames, 32x40\): wan: width must be a positive multiple of 16", "width=40")
    fails(r"ltx: height must be a positive multiple of 32, got 48", *_family("ltx"), "height=48")
    missing = tmp_path / "missing-lora"
    fails(rf"model.lora: {missing} does not exist", f"model.lora={missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(r"model.lora: .*empty holds no .safetensors file", f"model.lora={empty}")
    not_lora = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({"blocks.0.weight": torch.zeros(2)}, str(not_lora))
    fails(r"w.safetensors is not a LoRA \(weight 'blocks.0.weight'", f"model.lora={not_lora}")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    fails(r"junk.safetensors is not a readable safetensors file", f"model.lora={junk}")
    fails(r"model.transformer: .* holds a CogVideoXTransformer3DModel, not the wan family's WanTransformer3DModel",
          f"model.transformer={tiny['cogvideox'] / 'transformer'}")
    fails(r"model.id: .* is a CogVideoXPipeline, not a WanPipeline \(model.family: wan\)", f"model.id={tiny['cogvideox']}")
    fails(r"model.run: .*base_model.json not found", "model.family=null", "model.id=null", f"model.run={empty}")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "base_model.json").write_text(json.dumps({"model_id": "tiny://wan", "family": "wan", "output": "lora"}))
    fails(r"lora/pytorch_lora_weights.safetensors not found: the run has not finished", "model.family=null",
          "model.id=null", f"model.run={unfinished}")
    fails(r"attention_backend: .*unknown attention backend 'flashy'; the installed diffusers accepts: .*native",
          "attention_backend=flashy", exc=ConfigError)
    if not _has("xformers"):
        fails(r"attention_backend: .*'xformers' needs the xformers package \(pip install xformers\), which is not installed",
              "attention_backend=xformers", exc=ConfigError)
    fails(r"device must be auto, cpu, cuda or cuda:N, got 'gpu'", "device=gpu", exc=ConfigError)
    fails(r"model.run brings its own lora/", f"model.run={unfinished}", f"model.lora={lora_dir}", exc=ConfigError)
    fails(r"give model.family \(wan, cogvideox, ltx\) or model.run", "model.family=null", exc=ConfigError)
    fails(r"num_inference_steps: .*greater than or equal to 1", "num_inference_steps=0", exc=ConfigError)
    with pytest.raises(GenerateError, match=r"prompt 0: must be a non-empty string"):
        generate_videos(_cfg(), ["  "], out)


def test_bad_runtime_settings(tiny, tmp_path):
    """Errors found while loading: offload without a GPU, a backend CogVideoX's attention cannot use, a
    LoRA of another model."""
    if torch.cuda.is_available():
        pytest.skip("checks the messages of a machine without a GPU")
    with pytest.raises(GenerateError, match=r"cpu_offload: model moves weights between the CPU and a GPU"):
        generate_videos(_cfg("cpu_offload=model"), [PROMPT], tmp_path)
    with pytest.raises(ConfigError, match=r"device: cuda, but torch sees no CUDA device"):
        generate_videos(_cfg("device=cuda"), [PROMPT], tmp_path)
    with pytest.raises(GenerateError, match=r"attention_backend: flex: the attention of CogVideoXTransformer3DModel "
                                            r"always runs on PyTorch SDPA"):
        generate_videos(_cfg(*_family("cogvideox"), "attention_backend=flex"), [PROMPT], tmp_path)
    ltx_lora = tmp_path / "ltx-lora"
    _save_ltx_lora(tiny, ltx_lora)
    with pytest.raises(GenerateError, match=r"model.lora: .*cannot load it into the WanPipeline|none of its weights fits"):
        generate_videos(_cfg(f"model.lora={ltx_lora}"), [PROMPT], tmp_path)


def _save_ltx_lora(tiny, out: Path) -> None:
    from diffusers import LTXVideoTransformer3DModel

    from t2v.families import get_family
    from t2v.lora import add_lora, save_lora

    spec = get_family("ltx")
    model = LTXVideoTransformer3DModel.from_pretrained(str(tiny["ltx"]), subfolder="transformer")
    add_lora(model, rank=2, target_modules=["ff.net.0.proj"])
    save_lora(out, model, spec)


def test_read_prompts(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("  first  \n# a comment\n\nsecond # not a comment\n")
    assert read_prompts(p) == ["first", "second # not a comment"]
    (tmp_path / "e.txt").write_text("# only a comment\n\n")
    with pytest.raises(GenerateError, match=r"e.txt: no prompts in the file"):
        read_prompts(tmp_path / "e.txt")
    with pytest.raises(GenerateError, match=r"nope.txt: prompts file not found"):
        read_prompts(tmp_path / "nope.txt")
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a", "id": 1}\n\n{"prompt": "b"\n')
    with pytest.raises(GenerateError, match=r"p.jsonl:3: not valid JSON"):
        read_prompts(j)
    j.write_text('{"prompt": "a"}\n["b"]\n')
    with pytest.raises(GenerateError, match=r"p.jsonl:2: expected a JSON object with a \"prompt\" key"):
        read_prompts(j)
    j.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert read_prompts(j) == ["a", "b"]


def test_resolve_model_and_errors_are_captioner_errors(tiny):
    r = resolve_model(_cfg())
    assert r.family == "wan" and r.id == "tiny://wan" and Path(r.path) == Path(tiny["wan"]).resolve()
    assert issubclass(GenerateError, CaptionerError)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_generate_with_a_real_expansion_over_an_openai_server(tiny, tmp_path):
    """`t2v generate --expand-config`: the expander (loopback server) counts tokens with the target
    pipeline's tokenizer, and the pipeline gets the expanded text; the sidecar records the expansion."""
    from click.testing import CliRunner

    from t2v.cli import cli

    try:
        from chat_server import ChatServer
    except ImportError:  # pragma: no cover
        from tests.chat_server import ChatServer

    caption = ("A white cockatoo perches on a wooden beam in a bright room and slowly raises its pale yellow "
               "crest. It turns its head to the window, then looks back into the lens. The camera holds a "
               "static close-up from a low angle.")
    with ChatServer(responder=lambda body: caption) as server:
        ecfg = tmp_path / "expand.yaml"
        ecfg.write_text(f"expander:\n  type: openai\n  model: m\n  base_url: {server.base_url}\n  max_retries: 0\n"
                        f"cache_dir: {tmp_path / 'cache'}\nexamples:\n  k: 1\n  embedder: {{device: cpu}}\n"
                        "checks:\n  min_words: 10\n")
        res = CliRunner().invoke(cli, ["generate", "--config", "tiny", "--prompt", "A white cockatoo raises its crest",
                                       "--out", str(tmp_path / "v"), "--expand-config", str(ecfg)])
        assert res.exit_code == 0, res.output
        assert server.request_count == 1
    rec = json.loads(next((tmp_path / "v").glob("*.json")).read_text())
    assert rec["prompt"] == "A white cockatoo raises its crest"
    assert rec["pipeline_prompt"] == caption
    exp = rec["expansion"]
    assert exp["status"] == "expanded" and exp["max_tokens"] == 512 and exp["tokenizer"] == "tiny://wan/tokenizer"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["wan"], subfolder="tokenizer")
    assert exp["tokens"] == len(tok(caption).input_ids)
    # the Python API with the same expansion config: served from the expansion cache (the server is
    # gone), and the frames are those of a plain pipeline call on the expanded text
    v = G.generate_videos(_cfg(f"expand={json.dumps(str(ecfg))}"), ["A white cockatoo raises its crest"], tmp_path / "w")
    assert v[0].record["expansion"]["cached"] is True
    assert np.array_equal(v[0].frames, _plain(tiny, "wan", caption))


def test_several_videos_per_prompt_use_consecutive_seeds(tiny, tmp_path, monkeypatch):
    """videos_per_prompt: N videos per prompt with seeds seed..seed+N-1, each equal to the plain pipeline
    with its seed, one expansion per prompt; a rerun with a larger N makes only the new seeds."""
    calls = []

    def expander(config_ref, prompts, *, family, model_id, overrides=(), revision=None):
        calls.append(list(prompts))
        return [{"text": f"{p} In detail."} for p in prompts]

    monkeypatch.setattr("t2v.expansion.expand_for_generation", expander)
    cfg = _cfg("seed=3", "videos_per_prompt=2", "expand=tiny")
    videos = generate_videos(cfg, [PROMPT], tmp_path)
    assert calls == [[PROMPT]]  # expanded once for both seeds
    assert [v.seed for v in videos] == [3, 4]
    assert [v.path.name for v in videos] == [f"000-{G.slugify(PROMPT)}-seed3.mp4", f"000-{G.slugify(PROMPT)}-seed4.mp4"]
    for v in videos:
        assert v.record["seed"] == v.seed
        assert np.array_equal(v.frames, _plain(tiny, "wan", f"{PROMPT} In detail.", seed=v.seed))
    more = generate_videos(_cfg("seed=3", "videos_per_prompt=3", "expand=tiny"), [PROMPT], tmp_path)
    assert [v.skipped for v in more] == [True, True, False] and more[2].seed == 5


def test_processes_of_a_launch_share_the_videos(tiny, tmp_path, monkeypatch):
    """Under accelerate launch / torchrun (RANK, WORLD_SIZE), process r makes every WORLD_SIZE-th video;
    together they make all of them, each exactly as a single process would."""
    prompts = [PROMPT, "A dog runs on a beach.", "Rain on a window at night."]
    made = {}
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        videos = generate_videos(_cfg(), prompts, tmp_path / "shared")
        assert [v.assigned for v in videos] == [rank == 0, rank == 1, rank == 0]
        for v in videos:
            if v.assigned:
                assert not v.skipped and v.record["process"] == {"rank": rank, "world_size": 2}
                made[v.index] = v.frames
    assert sorted(made) == [0, 1, 2]
    assert len(list((tmp_path / "shared").glob("*.mp4"))) == 3
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("WORLD_SIZE")
    alone = generate_videos(_cfg(), prompts, tmp_path / "shared")
    assert all(v.skipped and v.assigned for v in alone)  # one process later: all done, nothing redone
    assert np.array_equal(made[1], _plain(tiny, "wan", prompts[1]))


def test_accelerate_launch_generates_a_prompt_list_on_two_processes(tiny, tmp_path):
    import os
    import subprocess
    import sys

    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("the accelerate launcher is not installed next to this python")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A white cockatoo.\nA dog on a beach.\nRain at night.\n")
    out = tmp_path / "launched"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "t2v.cli", "generate", "--config", "tiny", "--prompts", str(prompts), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and not out.exists():
        pytest.skip(f"accelerate could not start 2 CPU processes here: {proc.stderr[-800:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = sorted(json.loads(p.read_text())["process"]["rank"] for p in out.glob("*.json"))
    assert ranks == [0, 0, 1]
