"""Parse a config file's YAML: the node tree (for line numbers), the data, duplicate keys as problems, and a syntax
error as a plain-words report with the line quoted and a caret under the column.

PyYAML keeps the last of two equal keys without a word (YAML 1.1 leaves it to the application), so duplicates are
found on the composed tree, before merge keys (`<<`) are expanded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from model.problems import ConfigError, Problem

MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Document:
    """A parsed file: its node tree (None when empty), its data, and its duplicate keys."""

    root: yaml.Node | None
    data: Any
    duplicates: tuple[Problem, ...]


def read(text: str, shown: str) -> Document:
    """Parse one document; raise ConfigError with a plain-words report when the YAML is broken."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        duplicates = tuple(_duplicates(root, "")) if root is not None else ()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as err:
        raise ConfigError(syntax_report(shown, text, err)) from None
    finally:
        loader.dispose()
    return Document(root, data, duplicates)


def _duplicates(node: yaml.Node, path: str) -> list[Problem]:
    found: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == MERGE_TAG or not isinstance(key, yaml.ScalarNode):
                continue
            child = f"{path}.{key.value}" if path else str(key.value)
            line = key.start_mark.line + 1
            if key.value in first:
                found.append(Problem(
                    child, f"duplicate key '{key.value}' (first at line {first[key.value]}, again at line {line}); "
                           "YAML would silently keep only the last one",
                    "keep one of the two lines", line=line))
            else:
                first[key.value] = line
            found += _duplicates(value, child)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicates(item, f"{path}[{index}]")
    return found


def line_of(root: yaml.Node | None, dotted: str) -> int | None:
    """1-based line of the deepest YAML node on the dotted path (the key itself when the value is absent).

    Of two equal keys the last one counts, as it does for the data.
    """
    node, line = root, None
    for part in split(dotted):
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = None
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    match = (key, value)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def split(dotted: str) -> list[str | int]:
    """`fleets.prefill.endpoints[0].cores` -> ['fleets', 'prefill', 'endpoints', 0, 'cores']."""
    parts: list[str | int] = []
    for chunk in dotted.split("."):
        name, *indices = chunk.replace("]", "").split("[")
        if name:
            parts.append(name)
        parts += [int(i) for i in indices if i.isdigit()]
    return parts


def syntax_report(shown: str, text: str, err: yaml.YAMLError) -> str:
    """`file:line:column: not valid YAML: what is wrong`, the line with a caret under the column, and the fix."""
    problem = str(getattr(err, "problem", None) or err)
    context = str(getattr(err, "context", None) or "")
    mark = getattr(err, "problem_mark", None)
    context_mark = getattr(err, "context_mark", None)
    lines = text.splitlines()
    explanation, fix, at_context = _explain(problem, context, mark, lines)
    if at_context and context_mark is not None:
        mark = context_mark
    if mark is None:
        return f"{shown}: not valid YAML: {explanation}\n      fix: {fix}\n      (YAML parser: {problem})"
    line, column = mark.line + 1, mark.column + 1
    quoted = lines[mark.line] if mark.line < len(lines) else ""
    gutter = f"{line:>6} | "
    caret = " " * len(gutter[:-2]) + "| " + "".join(c if c == "\t" else " " for c in quoted[:mark.column]) + "^"
    return (f"{shown}:{line}:{column}: not valid YAML: {explanation}\n{gutter}{quoted}\n{caret}\n"
            f"      fix: {fix}\n      (YAML parser: {' '.join(filter(None, (context, problem)))})")


def _explain(problem: str, context: str, mark: Any, lines: list[str]) -> tuple[str, str, bool]:
    """(what is wrong, how to fix it, whether the context mark points at the cause) for PyYAML's common errors."""
    if "mapping values are not allowed here" in problem and mark is not None:
        return _explain_colon(mark, lines)
    if problem.startswith("found character '\\t'") or "found a tab character" in problem:
        return ("a tab character; YAML indents with spaces only",
                "replace the tab with spaces (two per level, as in config/dev.yaml)", False)
    found = re.match(r"found character '(.)' that cannot start any token", problem)
    if found:
        return (f"a value cannot start with '{found.group(1)}' unquoted",
                f"put the value in quotes, e.g. key: \"{found.group(1)}...\"", False)
    if "could not find expected ':'" in problem:
        return ("a line that is neither 'key: value' nor a list item (a ':' is missing, or a text went on to the "
                "next line)", "add ': ' after the key, or quote a text that spans lines", True)
    if "unexpected end of stream" in problem and "quoted scalar" in context:
        return "a quote opened here is never closed", "close the quote on the same line", True
    if "unknown escape character" in problem:
        return ("a backslash sequence that double quotes do not allow",
                "use single quotes for text with backslashes, or write \\\\ for one backslash", False)
    bracket = re.match(r"expected ',' or '([\]}])'", problem)
    if bracket:
        opening = "[" if bracket.group(1) == "]" else "{"
        return (f"a '{opening}' opened here is not closed with '{bracket.group(1)}' (or an item lacks its comma)",
                f"close it on the same line, or write the {'list' if opening == '[' else 'mapping'} as indented "
                "lines", True)
    if "expected <block end>" in problem and "'-'" in problem:
        return ("a list item ('- ...') where a 'key: value' line was expected",
                "indent the list under its key (key:, then '  - item' lines)", False)
    if "expected <block end>" in problem or "did not find expected key" in problem:
        return ("this line's indentation does not line up with the keys around it",
                "indent it exactly like the other keys of the same mapping (spaces only)", False)
    if "did not find expected '-' indicator" in problem:
        return ("this line is indented like a list item but does not start with '- '",
                "start it with '- ', or indent it like the key it belongs to", False)
    if "found undefined alias" in problem:
        return ("an alias (*name) with no anchor (&name) before it",
                "define the anchor first, e.g. endpoints: &shared [...] and later endpoints: *shared", False)
    if "found unhashable key" in problem:
        return "a key that is a list or mapping", "keys are plain names; write key: value", False
    if "expected a single document" in context:
        return ("a second YAML document ('---'); a config file holds one",
                "remove the '---' line and merge the two parts", False)
    return "YAML cannot read this line", "check the indentation and quoting on this line", False


def _explain_colon(mark: Any, lines: list[str]) -> tuple[str, str, bool]:
    """'mapping values are not allowed here': a deeper indent, a key without its space, or ': ' inside a value."""
    here = lines[mark.line] if mark.line < len(lines) else ""
    number = next((i for i in range(mark.line - 1, -1, -1)
                   if lines[i].strip() and not lines[i].lstrip().startswith("#")), None)
    previous = lines[number] if number is not None else ""
    at = (number or 0) + 1
    indent = len(here) - len(here.lstrip(" "))
    previous_indent = len(previous) - len(previous.lstrip(" "))
    previous_body = previous.strip()
    if previous and not re.search(r":(\s|$)", previous_body) and not previous_body.startswith("- "):
        return (f"line {at} ('{previous_body}') is not a 'key: value' pair (a key needs a space after its colon), "
                "so YAML reads it and this line as one text", f"write line {at} as key: value", False)
    if here.find(":") == mark.column and indent > previous_indent and not previous_body.endswith(":"):
        return (f"this line is indented deeper than line {at}, which already has a value, so this key belongs "
                "to no mapping", "indent it like the keys around it (spaces only)", False)
    return ("a second ': ' on one line; a value that contains ': ' must be quoted",
            "put the value in quotes, e.g. key: \"a: b\"", False)
