"""Parse Prometheus text exposition (format 0.0.4) into samples, enough for what the proxy's /metrics renders."""

from __future__ import annotations

import math
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


@dataclass
class Scrape:
    """All samples of one scrape, and the declared type of each metric family."""

    samples: list[Sample]
    types: dict[str, str]

    def family(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name]


class ExpositionError(ValueError):
    pass


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _parse_labels(text: str, line: str) -> tuple[Labels, str]:
    """Parse `{a="x",b="y"} rest` and return the labels and the rest of the line."""
    labels: list[tuple[str, str]] = []
    i = 1
    while True:
        while i < len(text) and text[i] in " ,":
            i += 1
        if i < len(text) and text[i] == "}":
            return tuple(labels), text[i + 1:]
        eq = text.find("=", i)
        if eq < 0 or eq + 1 >= len(text) or text[eq + 1] != '"':
            raise ExpositionError(f"bad label set in line {line!r}")
        name, j, raw = text[i:eq].strip(), eq + 2, []
        while j < len(text) and text[j] != '"':
            raw.append(text[j:j + 2] if text[j] == "\\" else text[j])
            j += 2 if text[j] == "\\" else 1
        if j >= len(text):
            raise ExpositionError(f"unterminated label value in line {line!r}")
        labels.append((name, _unescape("".join(raw))))
        i = j + 1


def _parse_value(text: str, line: str) -> float:
    token = text.split()[0] if text.split() else ""
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    try:
        return special[token] if token in special else float(token)
    except ValueError:
        raise ExpositionError(f"bad sample value in line {line!r}") from None


def parse(text: str) -> Scrape:
    samples: list[Sample] = []
    types: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace >= 0 and (space < 0 or brace < space):
            name = line[:brace]
            labels, rest = _parse_labels(line[brace:], line)
        else:
            if space < 0:
                raise ExpositionError(f"no value in line {line!r}")
            name, labels, rest = line[:space], (), line[space:]
        samples.append(Sample(name, labels, _parse_value(rest, line)))
    return Scrape(samples, types)
