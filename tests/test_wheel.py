"""The toolkit from a built wheel, installed into a fresh virtual environment and run outside the
checkout: the presets, the prompt files and the demo's samples ship inside the packages.

The wheel is built from a fresh copy of this checkout's sources (a ``build/`` folder left in the
checkout would carry modules that no longer exist into the wheel) and installed with ``--no-deps``; the fresh environment sees
the dependencies of the test environment through a ``.pth`` line naming its site-packages (a path
added that way does not run that folder's own ``.pth`` files, so the checkout's editable install
stays out of reach). Every import of ``captioner``, ``t2v`` and ``densecap`` is checked to come
from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what the wheel is built from (densecap/_assets links to configs/ and samples/ relatively)
SOURCES = ("pyproject.toml", "README.md", "densecap", "captioner", "t2v", "configs", "samples")

pytestmark = pytest.mark.slow


def _run(cmd: list, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    isolation = []
    try:
        import setuptools  # noqa: F401

        isolation = ["--no-build-isolation"]  # build with this environment's setuptools, offline
    except ImportError:
        pass
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", dist, src], cwd=tmp)
    wheel = next(dist.glob("densecap_t2v-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp)
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(here)))
    work = tmp / "elsewhere"  # not the checkout, not its parent
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "py": py, "site": site, "bin": venv / "bin", "work": work}


def test_wheel_carries_presets_prompts_and_samples(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for command in ("caption", "run", "expand", "generate", "train", "summarize", "prepare"):
        assert f"densecap/_assets/configs/{command}/tiny.yaml" in names, command
    for sample in ("cockatoo.mp4", "realshort.mp4", "pairs.jsonl", "cockatoo.diffsw.json", "train/captions.jsonl"):
        assert f"densecap/_assets/samples/{sample}" in names, sample
    assert any(n.startswith("captioner/prompts/") and n.endswith(".yaml") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "configs/", "samples/")) for n in names)
    # exactly the checkout's modules: none missing, none left over from an older layout
    modules = {n for n in names if n.endswith(".py") and n.split("/")[0] in ("densecap", "captioner", "t2v")}
    sources = {p.relative_to(ROOT).as_posix() for pkg in ("densecap", "captioner", "t2v")
               for p in (ROOT / pkg).rglob("*.py") if "_assets" not in p.parts}
    assert modules == sources, (sorted(modules - sources)[:5], sorted(sources - modules)[:5])


def test_installed_packages_and_assets_come_from_the_wheel(installed):
    out = _run([installed["py"], "-c", (
        "import json, captioner, t2v, densecap.assets as a; "
        "print(json.dumps([captioner.__file__, t2v.__file__, a.__file__, str(a.configs_dir()), str(a.samples_dir())]))"
    )], cwd=installed["work"]).stdout
    paths = [Path(p) for p in json.loads(out)]
    for p in paths:
        assert installed["site"] in p.parents, f"{p} is not from the wheel"
        assert ROOT not in p.parents


def test_caption_with_a_preset_outside_the_checkout(installed, tiny_models):
    video = Path(json.loads(_run([installed["py"], "-c", (
        "import json, densecap.assets as a; print(json.dumps(str(a.samples_dir() / 'realshort.mp4')))"
    )], cwd=installed["work"]).stdout))
    out = installed["work"] / "realshort.json"
    _run([installed["bin"] / "captioner", "caption", video, "--config", "tiny", "--out", out], cwd=installed["work"])
    record = json.loads(out.read_text())
    assert record["summary"] and len(record["keyframes"]) == 2 and record["config"]


def test_demo_outside_the_checkout(installed, t2v_tiny_models):
    out = installed["work"] / "demo"
    proc = _run([installed["bin"] / "t2v", "demo", "--out", out, "--steps", "2", "--expander", "tiny"],
                cwd=installed["work"], timeout=1200)
    summary = json.loads((out / "demo.json").read_text())
    video = Path(summary["outputs"]["video"])
    assert video.is_file() and video.stat().st_size > 0 and out in video.parents
    assert (out / "train" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert os.fspath(ROOT) not in proc.stdout + proc.stderr
