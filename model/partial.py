"""Build a usable DeploymentConfig from a file with type or schema errors, so the rules can still run on the rest.

Each failed setting is dropped (its default applies, or None where it has none) and marked unusable: the model that
owns it becomes a subclass whose read of that field raises `UnusableInput` inside `problems.guarding()`. A rule that
reads it therefore stops (`problems.skip_unusable`) instead of judging a stand-in, and every rule that reads only
good settings runs as usual. A mapping entry or list item that fails makes its whole field unusable (the rules
would otherwise count fleets or endpoints that are not there). Settings of misspelt keys and of duplicate keys are
unusable too. None when nothing usable can be built; the caller then reports the schema errors alone.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from model import model_paths
from model.problems import UnusableInput, is_guarding

Loc = tuple[str | int, ...]
ROUNDS = 4  # dropping a value can only reveal a required key, or a model check, one level up


def build(root: type[BaseModel], data: dict[str, Any], errors: Sequence[ErrorDetails],
          unusable: Iterable[Loc] = ()) -> BaseModel | None:
    """`root` validated from `data` without the settings that failed (`errors`) or are `unusable`."""
    data = copy.deepcopy(data)
    tainted: set[Loc] = set()
    for loc in unusable:
        _drop(root, data, loc, tainted)
    pending = list(errors)
    for _ in range(ROUNDS):
        for error in pending:
            loc = tuple(error["loc"])
            if error["type"] == "missing":
                tainted.add(loc)
            elif error["type"] == "extra_forbidden":
                _delete(data, loc)
            elif not _drop(root, data, loc, tainted):
                return None
        try:
            return _assemble(root, data, tainted)
        except _Failed as failed:
            pending = [e for e in failed.errors if not (e["type"] == "missing" and tuple(e["loc"]) in tainted)]
            if not pending:
                return None
    return None


class _Failed(Exception):
    """Validation of the rebuilt data still failed; errors located from the root."""

    def __init__(self, errors: list[ErrorDetails]) -> None:
        super().__init__(errors)
        self.errors = errors


def _validate(model: type[BaseModel], data: Any, at: Loc) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        for error in errors:
            error["loc"] = at + tuple(error["loc"])
        raise _Failed(errors) from None


def _drop(root: type[BaseModel], data: dict[str, Any], loc: Loc, tainted: set[Loc]) -> bool:
    """Remove the failed value (its whole field when it is a mapping entry or list item) and mark it unusable."""
    field = model_paths.field_prefix(root, loc)
    if not field:
        return False  # the whole file failed a model check: nothing to run rules on
    _delete(data, field)
    tainted.add(field)
    return True


def _assemble(root: type[BaseModel], data: dict[str, Any], tainted: set[Loc]) -> BaseModel:
    """Validate bottom-up: each model owning an unusable field is built as its guarded subclass, then its parent."""
    data = _before(root, copy.deepcopy(data))
    owners: dict[Loc, set[str]] = {}
    for loc in tainted:
        if loc and isinstance(loc[-1], str) and _exists(data, loc[:-1]):
            owners.setdefault(loc[:-1], set()).add(loc[-1])
    built: BaseModel | None = None
    for owner in sorted(owners, key=len, reverse=True):
        model = model_paths.model_of(root) if not owner else _model_at(root, owner)
        target = data if not owner else _get(data, owner)
        if model is None or not isinstance(target, dict):
            continue
        names = frozenset(owners[owner] & set(model.model_fields))
        missing = frozenset(n for n in names if n not in target and model.model_fields[n].is_required())
        instance = _validate(_guarded(model, names, missing), target, owner)
        if owner:
            _set(data, owner, instance)
        else:
            built = instance
    return built if built is not None else _validate(root, data, ())


@functools.cache
def _guarded(model: type[BaseModel], unusable: frozenset[str], missing: frozenset[str]) -> type[BaseModel]:
    """`model` whose `unusable` fields raise UnusableInput when read while guarding; `missing` ones default to None."""

    def __getattribute__(self: BaseModel, name: str) -> Any:
        if name in unusable and is_guarding():
            raise UnusableInput(name)
        return object.__getattribute__(self, name)

    namespace: dict[str, Any] = {
        "__module__": model.__module__, "__qualname__": model.__qualname__, "__getattribute__": __getattribute__,
        "__annotations__": {name: model.model_fields[name].annotation | None for name in missing},
        **{name: None for name in missing}}
    return type(model.__name__, (model,), namespace)


def _before(root: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """The root's mode="before" validators, applied here too, because a child built ahead of its parent no longer
    passes through them (e.g. the worker AMI that follows the image). They are idempotent: validation reruns them."""
    for decorator in root.__pydantic_decorators__.model_validators.values():
        if decorator.info.mode == "before":
            data = decorator.func(data)
    return data


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    steps = model_paths.resolve(root, loc)
    if len(steps) != len(loc):
        return None
    return model_paths.model_of(steps[-1].annotation)


def _exists(data: Any, loc: Loc) -> bool:
    try:
        _get(data, loc)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _get(data: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(data, BaseModel) or not isinstance(data, (dict, list)):
            raise TypeError(part)
        data = data[part]  # type: ignore[index]
    return data


def _set(data: Any, loc: Loc, value: Any) -> None:
    _get(data, loc[:-1])[loc[-1]] = value


def _delete(data: Any, loc: Loc) -> None:
    if not loc:
        return
    try:
        parent = _get(data, loc[:-1])
    except (KeyError, IndexError, TypeError):
        return
    if isinstance(parent, dict):
        parent.pop(loc[-1], None)
