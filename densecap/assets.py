"""Files that ship with the toolkit: the config presets (``configs/<command>/<preset>.yaml``) and
the samples the demo and the README use (``samples/``).

In a source checkout they are the repository's top-level ``configs/`` and ``samples/`` folders;
``densecap/_assets/`` links to them, and a wheel (``pip install .``, editable or not) carries their
files there, inside the package. So the presets and the demo work the same from a clone and from an
installed wheel, in any working directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["KINDS", "asset_dir", "configs_dir", "samples_dir"]

KINDS = ("configs", "samples")
_PACKAGED = Path(__file__).resolve().parent / "_assets"
_CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root, in a source checkout


def asset_dir(kind: str) -> Path:
    """The folder of ``kind`` ("configs" or "samples"): packaged first, else the checkout's."""
    if kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r}; expected one of {', '.join(KINDS)}")
    for base in (_PACKAGED, _CHECKOUT):
        folder = base / kind
        if folder.is_dir():
            return folder.resolve()  # the real folder: paths in messages and records name it
    raise FileNotFoundError(
        f"the toolkit's {kind}/ folder is missing (looked in {_PACKAGED} and {_CHECKOUT}); "
        "reinstall densecap-t2v (pip install .) or run from a clone of the repository"
    )


def configs_dir() -> Path:
    """``configs/``: one folder per command, one YAML file per preset."""
    return asset_dir("configs")


def samples_dir() -> Path:
    """``samples/``: small videos, caption records and pairs used by the demo, README and tests."""
    return asset_dir("samples")
