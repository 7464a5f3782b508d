"""Model families the trainer supports, one :class:`~t2v.families.base.ModelSpec` each.

``get_family("wan")`` returns the spec object; ``FAMILIES`` lists the names. Specs are cheap to make
and hold no model weights (those are in the :class:`~t2v.families.base.Components` they load).
"""

from __future__ import annotations

from t2v.families.base import Components, ModelSpec, TimestepConfig
from t2v.families.cogvideox import CogVideoXSpec
from t2v.families.ltx import LTXSpec
from t2v.families.wan import WanSpec

__all__ = ["FAMILIES", "Components", "ModelSpec", "TimestepConfig", "get_family"]

_SPECS: dict[str, type[ModelSpec]] = {"wan": WanSpec, "cogvideox": CogVideoXSpec, "ltx": LTXSpec}

#: the family names, in a fixed order
FAMILIES: tuple[str, ...] = tuple(_SPECS)


def get_family(name: str) -> ModelSpec:
    """The spec of the family ``name`` (case-insensitive); ``ValueError`` naming the choices otherwise."""
    key = name.strip().lower()
    if key not in _SPECS:
        raise ValueError(f"unknown model family {name!r}; available: {', '.join(FAMILIES)}")
    return _SPECS[key]()
