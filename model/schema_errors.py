"""Pydantic's validation errors in a user's words: "a list", "a mapping", "a number", "true or false"; "did you mean"
for unknown keys and values; a misspelt required key as one message instead of "Field required" plus
"Extra inputs"; each fix quoting the field's description (the one config/schema.json publishes).
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from typing import Any, Sequence

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from model import model_paths
from model.problems import Problem

Loc = tuple[str | int, ...]

# What each pydantic type error expected, as the README and the schema descriptions say it.
EXPECTED = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "text (quote it if it looks like a number or true/false)",
    "dict_type": "a mapping (indented 'key: value' lines)", "model_type": "a mapping (indented 'key: value' lines)",
    "model_attributes_type": "a mapping (indented 'key: value' lines)",
    "list_type": "a list ('- item' lines, or [a, b])", "tuple_type": "a list ('- item' lines, or [a, b])",
    "set_type": "a list ('- item' lines, or [a, b])",
}
BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
          "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}
# Pydantic's own words, for an error type without a message of ours.
PYDANTIC_WORDS = (("Input should be a valid dictionary or instance of", "expected a mapping, not"),
                  ("Input should be a valid dictionary", "expected a mapping"),
                  ("Input should be a valid tuple", "expected a list"), ("Input should be a valid list", "expected a list"),
                  ("Input should be a valid integer", "expected a whole number"),
                  ("Input should be a valid number", "expected a number"),
                  ("Input should be a valid boolean", "expected true or false"),
                  ("Input should be a valid string", "expected text"), ("Input should be", "expected"),
                  ("Extra inputs are not permitted", "unknown key"), ("Field required", "required key is missing"))


def translate(root: type[BaseModel], errors: Sequence[ErrorDetails],
              data: Any) -> tuple[list[Problem], set[Loc]]:
    """(problems, the settings a misspelt key was meant to set) for the errors of validating `data`."""
    missing: dict[Loc, set[str]] = defaultdict(set)
    for error in errors:
        if error["type"] == "missing" and error["loc"]:
            missing[tuple(error["loc"][:-1])].add(str(error["loc"][-1]))
    problems: list[Problem] = []
    meant: set[Loc] = set()
    renamed: set[Loc] = set()  # missing keys explained by a misspelling
    for error in errors:
        if error["type"] != "extra_forbidden":
            continue
        loc = tuple(error["loc"])
        owner, key = loc[:-1], str(loc[-1])
        steps = model_paths.resolve(root, loc)
        model = steps[-1].owner if steps and steps[-1].kind == "unknown" else None
        known = list(model.model_fields) if model else []
        present = _at(data, owner)
        elsewhere = [p for p, _ in model_paths.fields(root) if p.rsplit(".", 1)[-1] == key]
        required_match = difflib.get_close_matches(key, sorted(missing.get(owner, ())), n=1, cutoff=0.6)
        # A key that exists as it is written, one level off, is misplaced rather than misspelt (count at the top).
        match = required_match or ([] if elsewhere else difflib.get_close_matches(key, known, n=1, cutoff=0.6))
        path = dotted(loc)
        if match:
            intended = owner + (match[0],)
            if not (isinstance(present, dict) and match[0] in present):
                meant.add(intended)  # the setting it was meant to be is unset: its default is not the user's
            description = _description(model, match[0])
            if required_match:
                renamed.add(intended)
                fix = f"rename it to {match[0]} (required: {description})"
            else:
                fix = f"rename it to {match[0]} ({description})"
            problems.append(Problem(path, f"unknown key '{key}'; did you mean '{match[0]}'?", fix))
            continue
        if elsewhere:
            fix = f"move it: {key} belongs under {' or '.join(sorted(p.rsplit('.', 1)[0] for p in elsewhere))}"
        else:
            fix = (f"remove it; the keys here are {', '.join(known)} (config/schema.json describes each)"
                   if known else "remove it")
        problems.append(Problem(path, f"unknown key '{key}'", fix))
    for error in errors:
        if error["type"] == "extra_forbidden" or tuple(error["loc"]) in renamed:
            continue
        problems.append(_problem(root, error))
    return problems, meant


def dotted(loc: Sequence[Any]) -> str:
    """('fleets', 'prefill', 'endpoints', 0, 'cores') -> fleets.prefill.endpoints[0].cores."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(root: type[BaseModel], error: ErrorDetails) -> Problem:
    loc = tuple(error["loc"])
    path = dotted(loc) or "<top level>"
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    steps = model_paths.resolve(root, loc)
    last = steps[-1] if steps and len(steps) == len(loc) else None
    field = next((str(s.part) for s in reversed(steps) if s.kind == "field"), path)
    description = last.field.description if last and last.field and last.field.description else None
    about = f" ({description})" if description else ""
    if kind == "missing":
        return Problem(path, f"required key '{field}' is missing",
                       f"add {field} ({description.rstrip('.')})" if description else f"add {field}")
    if kind in EXPECTED:
        return Problem(path, f"expected {EXPECTED[kind]}, got {_described(value)}",
                       f"write {field} as {EXPECTED[kind].split(' (')[0]}{about}")
    if kind == "literal_error":
        options = [str(o) for o in model_paths.choices(last.annotation)] if last else []
        listed = ", ".join(options) or str(ctx.get("expected", ""))
        match = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        message = f"{_described(value)} is not one of {listed}" + (f"; did you mean '{match[0]}'?" if match else "")
        return Problem(path, message, f"set {field}: {match[0]}" if match else f"set {field} to one of {listed}{about}")
    if kind in BOUNDS:
        key, words = BOUNDS[kind]
        return Problem(path, f"must be {words} {ctx.get(key)}, got {_described(value)}",
                       f"set {field} to {words} {ctx.get(key)}{about}")
    if kind in ("too_short", "too_long"):
        limit = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        words = "at least" if kind == "too_short" else "at most"
        noun = "entry" if limit == 1 else "entries"
        return Problem(path, f"needs {words} {limit} {noun}, got {ctx.get('actual_length')}",
                       f"give {field} {words} {limit} {noun}{about}")
    if kind == "string_pattern_mismatch":
        return Problem(path, f"{_described(value)} is not in the form {field} takes",
                       f"write it as {field} expects: {description}" if description
                       else f"write {field} to match {ctx.get('pattern')}")
    message = str(error["msg"]).removeprefix("Value error, ")
    for theirs, ours in PYDANTIC_WORDS:
        message = message.replace(theirs, ours)
    return Problem(path, message, f"as the message says ({field}: {description})" if description
                   else "as the message says (config/schema.json describes each key)")


def _description(model: type[BaseModel] | None, name: str) -> str:
    field = model.model_fields.get(name) if model else None
    return (field.description if field and field.description else "see config/schema.json").rstrip(".")


def _described(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true or false)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    text = str(value)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _at(data: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data
