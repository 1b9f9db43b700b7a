"""Shared base for every config section: strict (unknown keys are errors), documented fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of all config sections: ``extra="forbid"`` so a typo in YAML is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
