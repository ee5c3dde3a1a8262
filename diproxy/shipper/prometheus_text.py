"""The proxy's /metrics (Prometheus text format 0.0.4) as flat samples, read with the Prometheus project's own parser
(prometheus_client.parser.text_string_to_metric_families)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

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
    """All samples of one scrape, and the type of the family each sample belongs to (by sample name)."""

    samples: list[Sample]
    types: dict[str, str]

    def family(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name]


class ExpositionError(ValueError):
    pass


def parse(text: str) -> Scrape:
    samples: list[Sample] = []
    types: dict[str, str] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.append(Sample(sample.name, tuple(sample.labels.items()), float(sample.value)))
                types[sample.name] = family.type
    except ValueError as exc:  # the parser's error for a line it cannot read
        raise ExpositionError(str(exc)) from None
    return Scrape(samples, types)
