"""Where a path of a config file lands in the config model: which model owns a key, its field, its allowed values.

Used to word validation errors (did-you-mean among a model's keys, a field's description, a Literal's choices), to
rebuild a partially valid config (`model/partial.py`), and by the test that every field has a description.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

from pydantic import BaseModel
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class Step:
    """One part of a path: a model's field, a mapping's key, a list's item, or a key the model does not have."""

    part: str | int
    kind: Literal["field", "key", "item", "unknown"]
    owner: type[BaseModel] | None  # the model whose field (or unknown key) this is
    field: FieldInfo | None
    annotation: Any  # the type of the value at this step (None when unknown)


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class an annotation holds directly (X, X | None), else None."""
    for candidate in _alternatives(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def choices(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a Literal annotation (also inside `| None`); empty for other types."""
    for candidate in _alternatives(annotation):
        if typing.get_origin(candidate) is Literal:
            return typing.get_args(candidate)
    return ()


def resolve(root: type[BaseModel], loc: Sequence[str | int]) -> list[Step]:
    """The steps of `loc` from `root`; stops at the first part the model cannot place."""
    steps: list[Step] = []
    annotation: Any = root
    for part in loc:
        model = model_of(annotation)
        if model is not None:
            field = model.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                steps.append(Step(part, "unknown", model, None, None))
                break
            annotation = field.annotation
            steps.append(Step(part, "field", model, field, annotation))
            continue
        container = _container(annotation)
        if container is None:
            break
        kind, item = container
        if (kind == "key") != isinstance(part, str):
            break
        annotation = item
        steps.append(Step(part, kind, None, None, annotation))
    return steps


def field_prefix(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[str | int, ...]:
    """The longest prefix of `loc` that ends at a model field (a mapping key or list item belongs to its field)."""
    steps = resolve(root, loc)
    for end in range(len(steps), 0, -1):
        if steps[end - 1].kind == "field":
            return tuple(loc[:end])
    return ()


def fields(root: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every field of the model tree as (dotted path, FieldInfo); mapping keys show as <name>, items as [i]."""
    for name, field in root.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        yield path, field
        annotation, suffix = field.annotation, ""
        while (container := _container(annotation)) is not None and model_of(annotation) is None:
            kind, annotation = container
            suffix += ".<name>" if kind == "key" else "[i]"
        model = model_of(annotation)
        if model is not None:
            yield from fields(model, path + suffix)


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _container(annotation: Any) -> tuple[Literal["key", "item"], Any] | None:
    for candidate in _alternatives(annotation):
        origin = typing.get_origin(candidate)
        args = typing.get_args(candidate)
        if origin is dict and len(args) == 2:
            return "key", args[1]
        if origin in (tuple, list) and args:
            return "item", args[0]
    return None
