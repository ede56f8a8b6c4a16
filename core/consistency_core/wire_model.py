"""Base class for every Kubernetes-facing model: camelCase on the wire, snake_case in Python. ("Model" here
is a pydantic model of the CR's and the stages' JSON, not a language model: those the worker loads.)"""

from __future__ import annotations

from typing import Any, Self, get_args

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """Strict about unknown fields so a typo in a CR is an error that names the field."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def part_of(cls, source: BaseModel, **changes: Any) -> Self:
        """This model's own fields, read from `source` (a model that inherits them, e.g. the TrainingKnobs of
        a QuickFixPhase): stage params carry spec sections this way instead of copying field by field."""
        values = {name: getattr(source, name) for name in cls.model_fields}
        return cls.model_validate({**values, **changes})


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `Model`, `Model | None` or `list[Model]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = nested_model(arg)
        if found is not None:
            return found
    return None
