"""The model a command works with, as its configs name it: a registered family, a model id (default:
the family's) and a revision. ``t2v prepare``, ``t2v train`` and ``t2v generate`` extend it with what
they need (dtypes, a LoRA, a run folder)."""

from __future__ import annotations

from pydantic import Field, field_validator

from densecap.config import StrictModel

__all__ = ["FamilyModelRef"]


class FamilyModelRef(StrictModel):
    """``family`` (checked against the registry), ``id`` (hub id, local folder or ``tiny://NAME``) and
    ``revision``."""

    family: str = Field("wan", description="a registered model family (t2v.families)")
    id: str | None = Field(None, description="hub id, local folder or tiny://NAME; default: the family's default")
    revision: str | None = None

    @field_validator("family")
    @classmethod
    def _registered_family(cls, v):
        from t2v.families import check_family

        return v if v is None else check_family(v)

    def resolved_id(self) -> str:
        """``id``, or the family's default model when it is not set."""
        from t2v.families import get_family

        return self.id or get_family(self.family).default_model_id
