"""Read `config/NAME.yaml`, validate it, and report every problem with file, line, dotted path and fix."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from pydantic import ValidationError

from stacks import rules
from stacks.config import DeploymentConfig

# DISTACK_CONFIG_DIR lets a team keep its environment files outside this repository.
CONFIG_DIR = Path(os.environ.get("DISTACK_CONFIG_DIR") or Path(__file__).resolve().parent.parent / "config")


class ConfigError(Exception):
    """A config file cannot be used; the message lists every problem."""


def available_environments(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Environment names that have a config file."""
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def print_warning(text: str) -> None:
    """Where warnings go by default: stderr, beside synth's summary and dictl's output."""
    print(text, file=sys.stderr)


def load_environment(name: str, config_dir: Path = CONFIG_DIR, *,
                     warn: Callable[[str], None] = print_warning) -> DeploymentConfig:
    """Load and validate config/NAME.yaml."""
    path = config_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_environments(config_dir)) or "none"
        raise ConfigError(f"{_shown(path)}: no such environment (known: {known})\n"
                          f"  fix: pick one with -c env=NAME / ENV=NAME, or create {_shown(path)}")
    return load_config_file(path, warn=warn)


def load_config_file(path: Path, *, check_name: bool = True,
                     warn: Callable[[str], None] = print_warning) -> DeploymentConfig:
    """Parse and validate one file; raise ConfigError listing every problem at once.

    check_name: the file name must equal `name` (off only for files that are not environments).
    warn: receives each warning (file:line, path, message, what to do) of a valid file; stderr by default.
    """
    shown = _shown(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{shown}: cannot read: {err.strerror}") from None
    try:
        # Parse once: the node tree gives line numbers for messages, the data comes from the same tree.
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{shown}{where}: not valid YAML: {getattr(err, 'problem', err)}\n"
                          "  fix: check indentation and quoting on that line") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: expected a mapping of settings at the top level\n"
                          "  fix: start from config/dev.yaml")
    try:
        config = DeploymentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_report(shown, node, _pydantic_problems(err))) from None
    problems = rules.check(config, file_stem=path.stem if check_name else None)
    if problems:
        raise ConfigError(_report(shown, node, problems))
    for warning in rules.warnings(config):
        line = _line_of(node, warning.path)
        warn(f"{shown}{f':{line}' if line else ''}: warning: {warning.path}: {warning.message}\n"
             f"      do: {warning.fix}")
    return config


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _pydantic_problems(err: ValidationError) -> list[rules.Problem]:
    problems = []
    for item in err.errors(include_url=False):
        path = _dotted(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(rules.Problem(path or "<top level>", message, _fix_for(item, path)))
    return problems


def _dotted(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fix_for(item: Any, path: str) -> str:
    kind = item["type"]
    field = path.rsplit(".", 1)[-1]
    if kind == "extra_forbidden":
        return f"remove '{field}' or correct its spelling (config/schema.json lists every key)"
    if kind == "missing":
        return f"add {field} (config/schema.json describes it)"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"set {field} within the stated bound"
    if kind == "string_pattern_mismatch":
        return f"write {field} in the expected form (see its description in config/schema.json)"
    if kind == "literal_error":
        return f"set {field} to one of the listed values"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"give {field} a value of the stated type"
    return "see config/schema.json for this setting"


def _report(shown: str, root: yaml.Node | None, problems: list[rules.Problem]) -> str:
    lines = [f"{shown}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
    for problem in problems:
        line = _line_of(root, problem.path)
        lines.append(f"  {shown}{f':{line}' if line else ''}: {problem.path}: {problem.message}")
        lines.append(f"      fix: {problem.fix}")
    return "\n".join(lines)


def _line_of(root: yaml.Node | None, dotted: str) -> int | None:
    """1-based line of the deepest YAML node on the dotted path (the key itself when the value is absent)."""
    node, line = root, None
    for part in _split(dotted):
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _split(dotted: str) -> list[str | int]:
    parts: list[str | int] = []
    for chunk in dotted.split("."):
        name, *indices = chunk.replace("]", "").split("[")
        if name:
            parts.append(name)
        parts += [int(i) for i in indices if i.isdigit()]
    return parts
