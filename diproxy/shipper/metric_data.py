"""Turn successive scrapes of the proxy's /metrics into CloudWatch MetricDatum entries.

Counters become per-interval deltas (a counter that went down, or a new proxy start time, means the proxy
restarted, so the current value is the delta). Histograms become per-interval distributions sent as
``Values``/``Counts``, one value per bucket, so CloudWatch percentiles and sample counts stay right to within a
bucket's width: https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_MetricDatum.html
Gauges are sent as read. The CloudWatch agent is not used because it drops Prometheus histograms:
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/ContainerInsights-Prometheus-metrics-conversion.html
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable

from diproxy.shipper.prometheus_text import Labels, Sample, Scrape

START_TIME = "process_start_time_seconds"
PROXY_UP = "ProxyUp"
DEPLOYMENT_DIMENSION = "Deployment"
SeriesKey = tuple[str, Labels]


@dataclass(frozen=True)
class MetricRule:
    """One CloudWatch metric: which Prometheus family feeds it, which labels stay as dimensions, which samples count."""

    metric: str
    family: str
    kind: str  # counter | gauge | histogram
    unit: str
    dimensions: tuple[str, ...] = ()
    keep: Callable[[Sample], bool] = field(default=lambda sample: True, compare=False)
    description: str = ""


def _status_class(first_digit: str) -> Callable[[Sample], bool]:
    return lambda sample: (sample.label("status") or "").startswith(first_digit)


def _state_is(state: str) -> Callable[[Sample], bool]:
    return lambda sample: sample.label("state") == state


RULES: tuple[MetricRule, ...] = (
    MetricRule("Requests", "diproxy_requests_total", "counter", "Count", description="client requests answered"),
    MetricRule("ServerErrorResponses", "diproxy_requests_total", "counter", "Count", keep=_status_class("5"),
               description="answers with a 5xx status (502, 503, 504)"),
    MetricRule("ClientErrorResponses", "diproxy_requests_total", "counter", "Count", keep=_status_class("4"),
               description="answers with a 4xx status (bad request, missing API key)"),
    MetricRule("Errors", "diproxy_errors_total", "counter", "Count", ("kind",),
               description="failures by kind, upstream ones per attempt"),
    MetricRule("Retries", "diproxy_retries_total", "counter", "Count",
               description="requests re-sent to another worker pair"),
    MetricRule("TimeToFirstToken", "diproxy_time_to_first_token_seconds", "histogram", "Milliseconds",
               description="request arrival to the first byte sent to the client"),
    MetricRule("RequestDuration", "diproxy_request_duration_seconds", "histogram", "Milliseconds",
               description="request arrival to the end of the answer"),
    MetricRule("InFlightRequests", "diproxy_in_flight_requests", "gauge", "Count",
               description="client requests in flight"),
    MetricRule("HealthyWorkers", "diproxy_pool_workers", "gauge", "Count", ("role",), keep=_state_is("healthy"),
               description="workers answering /health, by role"),
    MetricRule("UnhealthyWorkers", "diproxy_pool_workers", "gauge", "Count", ("role",), keep=_state_is("unhealthy"),
               description="registered workers failing /health, by role"),
)


def _dimension_name(label: str) -> str:
    return label[:1].upper() + label[1:]


def _without(labels: Labels, name: str) -> Labels:
    return tuple(item for item in labels if item[0] != name)


def _bucket_value(lower: float, upper: float) -> float:
    """The value one bucket stands for: its midpoint, or its lower bound for the open +Inf bucket."""
    return lower if math.isinf(upper) else (lower + upper) / 2


@dataclass
class Baseline:
    """Cumulative values at the last published scrape, and the proxy start time they belong to."""

    start_time: float | None = None
    values: dict[SeriesKey, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"start_time": self.start_time,
                "values": [[name, [list(pair) for pair in labels], value] for (name, labels), value in self.values.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Baseline":
        values = {(name, tuple((k, v) for k, v in labels)): float(value) for name, labels, value in data["values"]}
        start = data.get("start_time")
        return cls(float(start) if start is not None else None, values)


class MetricTranslator:
    """Computes datums against a baseline; ``commit()`` after a successful publish moves the baseline forward, so
    a failed publish is folded into the next interval instead of lost."""

    def __init__(self, deployment: str, rules: Iterable[MetricRule] = RULES, baseline: Baseline | None = None) -> None:
        self.deployment = deployment
        self.rules = tuple(rules)
        self.baseline = baseline or Baseline()
        self._pending: Baseline | None = None

    def translate(self, scrape: Scrape | None, at: datetime) -> list[dict[str, Any]]:
        """Datums for one interval; a failed scrape (None) yields only ProxyUp = 0."""
        if scrape is None:
            self._pending = None
            return [self._datum(PROXY_UP, (), "Count", at, value=0.0)]
        start_samples = scrape.family(START_TIME)
        start_time = start_samples[0].value if start_samples else None
        restarted = self.baseline.start_time is not None and start_time != self.baseline.start_time
        previous = {} if restarted else self.baseline.values
        cumulative = {(s.name, s.labels): s.value for s in scrape.samples
                      if scrape.types.get(self._family_of(s.name)) in ("counter", "histogram")}
        deltas = {key: (value - previous.get(key, 0.0) if value >= previous.get(key, 0.0) else value)
                  for key, value in cumulative.items()}
        datums = [self._datum(PROXY_UP, (), "Count", at, value=1.0)]
        for rule in self.rules:
            datums += self._rule_datums(rule, scrape, deltas, at)
        self._pending = Baseline(start_time, cumulative)
        return datums

    def commit(self) -> None:
        if self._pending is not None:
            self.baseline, self._pending = self._pending, None

    @staticmethod
    def _family_of(sample_name: str) -> str:
        for suffix in ("_bucket", "_sum", "_count"):
            if sample_name.endswith(suffix):
                return sample_name[: -len(suffix)]
        return sample_name

    def _rule_datums(self, rule: MetricRule, scrape: Scrape, deltas: dict[SeriesKey, float],
                     at: datetime) -> list[dict[str, Any]]:
        if rule.kind == "histogram":
            return self._histogram_datums(rule, scrape, deltas, at)
        family = scrape.family(rule.family)
        # Every dimension value seen in the family gets a datum, 0 when no sample matches (e.g. no healthy
        # decode worker left), so an alarm sees a zero and not missing data.
        totals: dict[tuple[str, ...], float] = {
            tuple(s.label(d) or "" for d in rule.dimensions): 0.0 for s in family}
        if not rule.dimensions:
            totals.setdefault((), 0.0)
        for sample in family:
            if rule.keep(sample):
                key = tuple(sample.label(d) or "" for d in rule.dimensions)
                value = deltas.get((sample.name, sample.labels), 0.0) if rule.kind == "counter" else sample.value
                totals[key] += value
        return [self._datum(rule.metric, tuple(zip(rule.dimensions, key)), rule.unit, at, value=total)
                for key, total in sorted(totals.items())]

    def _histogram_datums(self, rule: MetricRule, scrape: Scrape, deltas: dict[SeriesKey, float],
                          at: datetime) -> list[dict[str, Any]]:
        per_series: dict[Labels, list[tuple[float, float]]] = {}
        for sample in scrape.family(rule.family + "_bucket"):
            bound = sample.label("le")
            if bound is None:
                continue
            per_series.setdefault(_without(sample.labels, "le"), []).append(
                (float(bound), deltas.get((sample.name, sample.labels), 0.0)))
        counts: dict[tuple[float, float], float] = {}
        for buckets in per_series.values():
            lower, below = 0.0, 0.0
            for upper, cumulative in sorted(buckets):
                counts[(lower, upper)] = counts.get((lower, upper), 0.0) + max(0.0, cumulative - below)
                lower, below = upper, cumulative
        scale = 1000.0 if rule.unit == "Milliseconds" else 1.0
        pairs = [(_bucket_value(lo, hi) * scale, n) for (lo, hi), n in sorted(counts.items()) if n > 0]
        if not pairs:
            return []
        return [self._datum(rule.metric, (), rule.unit, at, values=[v for v, _ in pairs], counts=[n for _, n in pairs])]

    def _datum(self, metric: str, dimensions: tuple[tuple[str, str], ...], unit: str, at: datetime, *,
               value: float | None = None, values: list[float] | None = None,
               counts: list[float] | None = None) -> dict[str, Any]:
        datum: dict[str, Any] = {
            "MetricName": metric,
            "Dimensions": [{"Name": DEPLOYMENT_DIMENSION, "Value": self.deployment}]
            + [{"Name": _dimension_name(label), "Value": v} for label, v in dimensions],
            "Timestamp": at, "Unit": unit, "StorageResolution": 60,
        }
        if values is not None:
            datum["Values"], datum["Counts"] = values, counts
        else:
            datum["Value"] = value
        return datum
