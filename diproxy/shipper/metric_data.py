"""Turn successive scrapes of the proxy's /metrics into CloudWatch MetricDatum entries: the part of the proxy's
telemetry the CloudWatch agent cannot carry (docs/observability.md; the agent ships the proxy's journal).

Histograms become per-interval distributions sent as ``Values``/``Counts``, one value per bucket, so CloudWatch
percentiles and sample counts stay right to within a bucket's width
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_MetricDatum.html). The agent's Prometheus input
drops histograms: it keeps gauges, counters and summaries only (aws/amazon-cloudwatch-agent
plugins/inputs/prometheus/metrics_filter.go@v1.300071.0, "Only Gauge, Counter and Summary are supported").
The per-role load is a ratio of two counters' increases over the interval (request-seconds / endpoint-seconds, the
time average, diproxy/load.py); the agent has no arithmetic across series. Counters become per-interval deltas (a
counter that went down, or a new proxy start time, means the proxy restarted, so the current value is the delta);
the agent would drop each counter series' first value (plugins/inputs/prometheus/delta_calculator.go: a series seen
for the first time only sets the baseline), so the first 5xx of a status would never count. Gauges are sent as read.
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
ROLE_DIMENSION = "Role"
# The per-role load signals each fleet's target tracking follows. The stack spells the same names in model/naming.py
# (PROXY_METRIC_*_LOAD; diproxy does not import stacks, tests/ops/test_layering.py checks they agree). A standard
# endpoint serves whole requests, so its load goes under the decode name with Role=standard, as the stack reads it
# (model/scaling_config.py ROLE_SIGNALS).
PREFILL_LOAD = "PrefillRequestsPerEndpoint"
DECODE_LOAD = "DecodeStreamsPerEndpoint"
SeriesKey = tuple[str, Labels]


@dataclass(frozen=True)
class MetricRule:
    """One CloudWatch metric: which Prometheus family feeds it, which labels stay as dimensions, which samples count
    (those carrying the `match` label values, and accepted by `keep`). A ratio divides the increase of `family` by
    that of `per`, both summed over the interval."""

    metric: str
    family: str
    kind: str  # counter | gauge | histogram | ratio
    unit: str
    dimensions: tuple[str, ...] = ()
    match: tuple[tuple[str, str], ...] = ()
    keep: Callable[[Sample], bool] = field(default=lambda sample: True, compare=False)
    per: str = ""
    description: str = ""

    def accepts(self, sample: Sample) -> bool:
        return all(sample.label(name) == value for name, value in self.match) and self.keep(sample)


def _status_class(first_digit: str) -> Callable[[Sample], bool]:
    return lambda sample: (sample.label("status") or "").startswith(first_digit)


def _load(metric: str, role: str, description: str) -> MetricRule:
    return MetricRule(metric, "diproxy_load_request_seconds_total", "ratio", "None", ("role",), (("role", role),),
                      per="diproxy_load_endpoint_seconds_total", description=description)


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
    MetricRule("LmcacheTransferTimeouts", "diproxy_lmcache_transfer_timeouts_total", "counter", "Count",
               description="engine lmcache: requests sent to decode without the senders' transfer-done reports "
                           "(decode recomputed the prompt)"),
    MetricRule("TimeToFirstToken", "diproxy_time_to_first_token_seconds", "histogram", "Milliseconds",
               description="request arrival to the first byte sent to the client"),
    MetricRule("InterTokenLatency", "diproxy_inter_token_latency_seconds", "histogram", "Milliseconds",
               description="between successive chunks of a stream written to the client"),
    MetricRule("RequestDuration", "diproxy_request_duration_seconds", "histogram", "Milliseconds",
               description="request arrival to the end of the answer"),
    # NIXL handoffs (diproxy/handoffs.py): the proxy's own measure of KV moving, docs/kv-handoffs.md.
    MetricRule("KvHandoffTime", "diproxy_kv_handoff_seconds", "histogram", "Milliseconds",
               description="engine nixl: a prefill's answer with kv_transfer_params to its decode's start (the KV "
                           "transfer, decode's queueing and, streamed, its first step)"),
    MetricRule("KvHandoffsPending", "diproxy_kv_handoffs_pending", "gauge", "Count",
               description="engine nixl: handoffs whose prefill holds KV no decode has started on, all endpoints"),
    MetricRule("KvReleases", "diproxy_kv_releases_total", "counter", "Count", ("outcome",),
               description="engine nixl: KV blocks of clients that left before decode, by outcome (released, "
                           "failed, dropped)"),
    MetricRule("InFlightRequests", "diproxy_in_flight_requests", "gauge", "Count",
               description="client requests in flight"),
    MetricRule("HealthyWorkers", "diproxy_pool_workers", "gauge", "Count", ("role",), (("state", "healthy"),),
               description="workers answering /health, by role"),
    MetricRule("UnhealthyWorkers", "diproxy_pool_workers", "gauge", "Count", ("role",), (("state", "unhealthy"),),
               description="registered workers failing /health, by role"),
    _load(PREFILL_LOAD, "prefill", "DI: requests waiting for or in prefill per healthy prefill endpoint (at least "
          "1), averaged over the minute"),
    _load(DECODE_LOAD, "decode", "DI: requests past prefill, streaming from decode, per healthy decode endpoint "
          "(at least 1), averaged over the minute"),
    _load(DECODE_LOAD, "standard", "standard mode: requests waiting for or at an endpoint per healthy endpoint "
          "(at least 1), averaged over the minute"),
)


@dataclass(frozen=True)
class PublishedMetric:
    """One metric as CloudWatch holds it, for checks of whoever reads it (the dashboard, alarms, target tracking):
    namespace DiStack/Proxy (settings.DEFAULT_NAMESPACE), these dimension names (Deployment first), and the values
    some dimensions always have (the load metrics' Role). kind says which statistics make sense: histogram ->
    percentiles and SampleCount; counter -> Sum; gauge and ratio -> Average, Minimum, Maximum."""

    name: str
    unit: str
    kind: str
    dimensions: tuple[str, ...]
    fixed: tuple[tuple[str, str], ...] = ()
    description: str = ""


def published(rules: Iterable[MetricRule] = RULES) -> tuple[PublishedMetric, ...]:
    """Every metric the shipper sends, ProxyUp included (1 per interval, 0 when /metrics did not answer)."""
    found = [PublishedMetric(PROXY_UP, "Count", "gauge", (DEPLOYMENT_DIMENSION,),
                             description="1 each interval the proxy's /metrics answered, 0 when it did not")]
    for rule in rules:
        dimensions = tuple(_dimension_name(label) for label in rule.dimensions)
        fixed = tuple((_dimension_name(label), value) for label, value in rule.match if label in rule.dimensions)
        found.append(PublishedMetric(rule.metric, rule.unit, rule.kind, (DEPLOYMENT_DIMENSION, *dimensions), fixed,
                                     rule.description))
    return tuple(found)


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
                      if scrape.types.get(s.name) in ("counter", "histogram")}
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

    def _rule_datums(self, rule: MetricRule, scrape: Scrape, deltas: dict[SeriesKey, float],
                     at: datetime) -> list[dict[str, Any]]:
        if rule.kind == "histogram":
            return self._histogram_datums(rule, scrape, deltas, at)
        if rule.kind == "ratio":
            return self._ratio_datums(rule, scrape, deltas, at)
        family = scrape.family(rule.family)
        # Every dimension value seen in the family gets a datum, 0 when no sample matches (e.g. no healthy
        # decode worker left), so an alarm sees a zero and not missing data.
        totals: dict[tuple[str, ...], float] = {
            tuple(s.label(d) or "" for d in rule.dimensions): 0.0 for s in family}
        if not rule.dimensions:
            totals.setdefault((), 0.0)
        for sample in family:
            if rule.accepts(sample):
                key = tuple(sample.label(d) or "" for d in rule.dimensions)
                value = deltas.get((sample.name, sample.labels), 0.0) if rule.kind == "counter" else sample.value
                totals[key] += value
        return [self._datum(rule.metric, tuple(zip(rule.dimensions, key)), rule.unit, at, value=total)
                for key, total in sorted(totals.items())]

    def _ratio_datums(self, rule: MetricRule, scrape: Scrape, deltas: dict[SeriesKey, float],
                      at: datetime) -> list[dict[str, Any]]:
        def increases(family: str) -> dict[tuple[str, ...], float]:
            sums: dict[tuple[str, ...], float] = {}
            for sample in scrape.family(family):
                if rule.accepts(sample):
                    key = tuple(sample.label(d) or "" for d in rule.dimensions)
                    sums[key] = sums.get(key, 0.0) + deltas.get((sample.name, sample.labels), 0.0)
            return sums

        numerators, denominators = increases(rule.family), increases(rule.per)
        return [self._datum(rule.metric, tuple(zip(rule.dimensions, key)), rule.unit, at,
                            value=numerators.get(key, 0.0) / per)
                for key, per in sorted(denominators.items()) if per > 0]

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
