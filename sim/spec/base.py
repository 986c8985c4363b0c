"""Shared pieces of the typed specs: a strict base model and quantity field types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from .units import EXAMPLES, Kind, parse_quantity


class Spec(BaseModel):
    """Strict, immutable: unknown keys are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False,
                              validate_default=True)


def _quantity(kind: Kind, **constraints):
    schema = {
        "anyOf": [{"type": "number"}, {"type": "string"}],
        "description": f"a number in SI base units or a string such as {EXAMPLES[kind]}",
    }
    return Annotated[
        float,
        BeforeValidator(lambda v: parse_quantity(v, kind)),
        Field(**constraints),
        WithJsonSchema(schema),
    ]


Bytes = _quantity("bytes", gt=0)
Bandwidth = _quantity("bandwidth", gt=0)
Flops = _quantity("flops", gt=0)
Seconds = _quantity("time", gt=0)
SecondsOrZero = _quantity("time", ge=0)
Power = _quantity("power", gt=0)
PositiveNumber = _quantity("count", gt=0)
NonNegativeNumber = _quantity("count", ge=0)
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
