"""Turning pydantic's validation errors into one paragraph a user can act on."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import SpecError, did_you_mean


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models reachable from a field annotation (through unions/Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_submodels(arg))
    return out


def _walk(cls: type[BaseModel], loc: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """Follow `loc` through the model classes. Returns the user-facing key path (union tags
    and type labels dropped) and the class holding the last key, when known."""
    path: list[str] = []
    current: type[BaseModel] | None = cls
    for item in loc:
        if isinstance(item, int):
            if path:
                path[-1] += f"[{item}]"
            continue
        if current is not None and item in current.model_fields:
            path.append(item)
            subs = _submodels(current.model_fields[item].annotation)
            current = subs[0] if len(subs) == 1 else _Union(subs) if subs else None
            continue
        if isinstance(current, _Union):  # a discriminator tag names the member
            current = current.pick(item)
            continue
        if "[" in str(item) or str(item) in {"str", "int", "float", "bool", "dict", "list"}:
            continue  # a type label pydantic adds for plain unions
        path.append(str(item))
        current = None
    return path, current if isinstance(current, type) else None


class _Union:
    """Several candidate models; a discriminator value selects one."""

    model_fields: dict = {}

    def __init__(self, members: list[type[BaseModel]]):
        self.members = members

    def pick(self, tag: str) -> type[BaseModel] | None:
        for m in self.members:
            for f in m.model_fields.values():
                if typing.get_origin(f.annotation) is typing.Literal and tag in typing.get_args(
                        f.annotation):
                    return m
        return None


def _unknown_key_fix(key: str, allowed: list[str]) -> str:
    hint = did_you_mean(key, allowed)
    return (hint[0].upper() + hint[1:] + " " if hint else "") + (
        "Allowed keys here: " + ", ".join(allowed) if allowed else "remove the key")


def check_key_path(cls: type[BaseModel], keys: list[str], *, file: str | None, key: str,
                   loose: dict[str, type[BaseModel]] | None = None) -> None:
    """Raise the 'unknown key' SpecError when the dotted path `keys` names no field of `cls`,
    following nested models and every member of a union (a key of any member passes).
    `loose` gives the model behind a top-level field typed as a plain mapping (a preset name
    or mapping, where `preset` is a key too). Below a field that is not a model (a number, a
    free mapping) nothing is checked: the value's own validation decides."""
    members: list = [cls]
    for i, k in enumerate(keys):
        if i == 1 and loose and keys[0] in loose and k == "preset":
            return
        having = [m for m in members if k in m.model_fields]
        if not having:
            allowed = list(dict.fromkeys(f for m in members for f in m.model_fields))
            what = "unknown key" + (f" {k!r}" if i < len(keys) - 1 else "")
            raise SpecError(what, file=file, key=key, fix=_unknown_key_fix(k, allowed))
        if i == 0 and loose and k in loose:
            members = [loose[k]]
            continue
        members = [s for m in having for s in _submodels(m.model_fields[k].annotation)]
        if not members:
            return


def _describe(err: dict, parent: type[BaseModel] | None, key: str) -> tuple[str, str]:
    kind = err["type"]
    value = err.get("input")
    msg = err["msg"]
    if kind == "extra_forbidden":
        return "unknown key", _unknown_key_fix(key, list(parent.model_fields) if parent else [])
    if kind == "missing":
        return "required key is missing", "add it (see `racksim schema` for its meaning)"
    if kind == "union_tag_invalid":
        expected = err.get("ctx", {}).get("expected_tags", "")
        tags = [t.strip(" '") for t in str(expected).split(",")]
        tag = err.get("ctx", {}).get("tag", value)
        hint = did_you_mean(tag, tags)
        return f"{tag!r} is not one of {expected}", (hint or f"use one of {expected}")
    if kind == "union_tag_not_found":
        field = err.get("ctx", {}).get("discriminator", "")
        return f"needs a {field} key to say which kind it is", f"add {field}: ..."
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        tags = [t.strip(" '") for t in str(expected).replace(" or ", ",").split(",")]
        hint = did_you_mean(value, tags)
        return f"{value!r} is not allowed", (hint or f"use {expected}")
    if kind.startswith("value_error") or kind == "assertion_error":
        text = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        problem, _, fix = text.partition("; write it like ")
        if fix:
            return problem, f"write it like {fix}"
        return text, "correct the value as described"
    if kind in {"greater_than", "greater_than_equal", "less_than_equal", "less_than"}:
        return f"{value!r}: {msg.lower()}", "give a value in range"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"expected a whole number, got {value!r}", "write an integer such as 64"
    if kind in {"float_type", "float_parsing", "string_type", "bool_type", "bool_parsing",
                "dict_type", "model_type", "list_type"}:
        return f"{msg.lower()}, got {value!r} ({type(value).__name__})", \
            "give a value of the expected type (see `racksim schema`)"
    return f"{msg} (got {value!r})", "see `racksim schema` for what is expected"


def spec_error(exc: ValidationError, cls: type[BaseModel], file: str | None,
               prefix: str | None = None) -> SpecError:
    """One SpecError for a ValidationError: the first problem, with a count of the others."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    path, parent = _walk(cls, tuple(err["loc"]))
    if err["type"] == "extra_forbidden" and path:
        _, parent = _walk(cls, tuple(err["loc"])[:-1])
    key = ".".join(([prefix] if prefix else []) + path) or None
    problem, fix = _describe(err, parent, path[-1] if path else "")
    if len(errors) > 1:
        problem += f" ({len(errors) - 1} more problem(s) after this one)"
    return SpecError(problem, file=file, key=key, fix=fix)


def validate(cls: type[BaseModel], data: Any, file: str | None, prefix: str | None = None):
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping of keys to values, got {type(data).__name__}",
                        file=file, key=prefix, fix="write `key: value` lines")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise spec_error(exc, cls, file, prefix) from None
