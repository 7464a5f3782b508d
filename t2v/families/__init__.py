"""Model families the trainer and the generator support, one :class:`~t2v.families.base.ModelSpec`
each, looked up by name in one registry.

``get_family("wan")`` returns a spec object; ``family_names()`` lists the registered names. Specs are
cheap to make and hold no model weights (those are in the :class:`~t2v.families.base.Components` they
load). A new family is one module with a ``ModelSpec`` subclass and one ``register_family`` line
(here for the built-in ones, or in the user's code before configs naming it are loaded).
"""

from __future__ import annotations

from t2v.families.base import Components, ModelSpec, TimestepConfig
from t2v.families.cogvideox import CogVideoXSpec
from t2v.families.ltx import LTXSpec
from t2v.families.wan import WanSpec

__all__ = [
    "FAMILIES", "Components", "ModelSpec", "TimestepConfig", "check_family", "family_names", "get_family",
    "register_family", "unregister_family",
]

_SPECS: dict[str, type[ModelSpec]] = {}


def register_family(spec_cls: type[ModelSpec]) -> type[ModelSpec]:
    """Register a family under its spec's ``name`` (lower-case); usable as a class decorator. Registering
    another class under a taken name is a ``ValueError``."""
    name = str(spec_cls.name).strip().lower()
    if not name:
        raise ValueError(f"{spec_cls.__qualname__}: a family needs a name")
    taken = _SPECS.get(name)
    if taken is not None and taken is not spec_cls:
        raise ValueError(f"model family {name!r} is already registered ({taken.__module__}.{taken.__qualname__})")
    _SPECS[name] = spec_cls
    return spec_cls


def unregister_family(name: str) -> None:
    """Remove a registered family (tests, plugins that replace one)."""
    _SPECS.pop(name.strip().lower(), None)


def family_names() -> tuple[str, ...]:
    """The registered family names, in registration order."""
    return tuple(_SPECS)


def check_family(name: str) -> str:
    """``name`` as registered (case-insensitive); ``ValueError`` naming the choices otherwise."""
    key = str(name).strip().lower()
    if key not in _SPECS:
        raise ValueError(f"unknown model family {name!r}; available: {', '.join(family_names())}")
    return key


def get_family(name: str) -> ModelSpec:
    """The spec of the family ``name`` (case-insensitive); ``ValueError`` naming the choices otherwise."""
    return _SPECS[check_family(name)]()


register_family(WanSpec)
register_family(CogVideoXSpec)
register_family(LTXSpec)

#: the built-in families (``family_names()`` also lists the ones registered later)
FAMILIES: tuple[str, ...] = family_names()
