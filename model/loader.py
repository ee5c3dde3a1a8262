"""Read `config/NAME.yaml`, validate it, and report every problem with file, line, dotted path and fix.

Type and schema errors and the rules' findings come in one report, ordered by line: where settings fail, the rules
still run on the rest (`model/partial.py`), skipping only those that read a failed setting.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from pydantic import ValidationError

from model import partial, rules, schema_errors, yaml_reader
from model.config import DeploymentConfig
from model.problems import ConfigError, Problem, UnusableInput, guarding

__all__ = ["CONFIG_DIR", "REMOVE", "Change", "ConfigError", "available_environments", "load_config_file",
           "load_environment", "print_warning"]

# DISTACK_CONFIG_DIR lets a team keep its environment files outside this repository.
CONFIG_DIR = Path(os.environ.get("DISTACK_CONFIG_DIR") or Path(__file__).resolve().parent.parent / "config")

# A Change's value that removes the key (e.g. model.parameters_billion, which described the model being replaced).
REMOVE = object()
# A change made on the command line instead of in the file: dotted path -> (value or REMOVE, the flag that made it).
Change = Mapping[str, tuple[Any, str]]


def available_environments(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Environment names that have a config file."""
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def print_warning(text: str) -> None:
    """Where warnings go by default: stderr, beside synth's summary and dictl's output."""
    print(text, file=sys.stderr)


def load_environment(name: str, config_dir: Path = CONFIG_DIR, *,
                     warn: Callable[[str], None] = print_warning, changes: Change | None = None) -> DeploymentConfig:
    """Load and validate config/NAME.yaml (with `changes` applied, as `dictl rollout` does before it sends)."""
    path = config_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_environments(config_dir)) or "none"
        raise ConfigError(f"{_shown(path)}: no such environment (known: {known})\n"
                          f"  fix: pick one with -c env=NAME / ENV=NAME, or create {_shown(path)}")
    return load_config_file(path, warn=warn, changes=changes)


def load_config_file(path: Path, *, check_name: bool = True, warn: Callable[[str], None] = print_warning,
                     changes: Change | None = None) -> DeploymentConfig:
    """Parse and validate one file; raise ConfigError listing every problem at once, ordered by line.

    check_name: the file name must equal `name` (off only for files that are not environments).
    warn: receives each warning (file:line, path, message, what to do) of a valid file; stderr by default.
    changes: settings replaced on the command line; their problems name the flag instead of a line.
    """
    shown = _shown(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{shown}: cannot read: {err.strerror}") from None
    document = yaml_reader.read(text, shown)
    if not isinstance(document.data, dict):
        raise ConfigError(f"{shown}: expected a mapping of settings at the top level\n"
                          "  fix: start from config/dev.yaml")
    data = _changed(document.data, changes or {})
    problems = list(document.duplicates)
    unusable = {tuple(yaml_reader.split(p.path)) for p in document.duplicates}
    errors = []
    try:
        config: DeploymentConfig | None = DeploymentConfig.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        found, meant = schema_errors.translate(DeploymentConfig, errors, data)
        problems += found
        unusable |= meant
        config = None
    if errors or unusable:
        config = partial.build(DeploymentConfig, data, errors, unusable)  # type: ignore[assignment]
    if config is not None:
        try:
            with guarding():
                problems += rules.check(config, file_stem=path.stem if check_name else None)
        except UnusableInput:
            pass  # a rule outside skip_unusable read a failed setting: the schema errors still stand
    if problems:
        raise ConfigError(_report(shown, document.root, problems, changes or {}))
    for warning in rules.warnings(config):  # type: ignore[arg-type]
        _, where = _where(shown, document.root, warning, changes or {})
        warn(f"{where}: warning: {warning.path}: {warning.message}\n      do: {warning.fix}")
    return config  # type: ignore[return-value]


def _changed(data: dict[str, Any], changes: Change) -> dict[str, Any]:
    if not changes:
        return data
    data = copy.deepcopy(data)
    for dotted, (value, _) in changes.items():
        *parents, key = yaml_reader.split(dotted)
        target = data
        for part in parents:
            target = target.setdefault(part, {}) if isinstance(target, dict) else {}
        if not isinstance(target, dict):
            continue
        if value is REMOVE:
            target.pop(key, None)
        else:
            target[key] = value
    return data


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _where(shown: str, root: Any, problem: Problem, changes: Change) -> tuple[int, str]:
    """(line for sorting, 0 when none; `file:line`, or `file (--flag)` for a setting a command-line flag changed)."""
    flag = next((f for p, (_, f) in changes.items() if problem.path == p or problem.path.startswith(p + ".")), None)
    line = problem.line or (None if flag else yaml_reader.line_of(root, problem.path))
    return line or 0, f"{shown} ({flag})" if flag else f"{shown}{f':{line}' if line else ''}"


def _report(shown: str, root: Any, problems: list[Problem], changes: Change) -> str:
    """Header, then each problem as `file:line: path: message` and its fix, in line order (file-wide ones first)."""
    flags = sorted({flag for _, flag in changes.values()})
    placed = [(*_where(shown, root, problem, changes), problem) for problem in problems]
    placed.sort(key=lambda item: item[0])
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    lines = [f"{shown} with {' '.join(flags)}: {count}" if flags else f"{shown}: {count}"]
    for _, where, problem in placed:
        lines.append(f"  {where}: {problem.path}: {problem.message}")
        lines.append(f"      fix: {problem.fix}")
    return "\n".join(lines)
