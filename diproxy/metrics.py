"""Prometheus text exposition (format 0.0.4) for the proxy's counters, gauges and latency histograms, and the
per-role load the fleets' autoscaling follows."""

from __future__ import annotations

import bisect
import time
from typing import Callable, Iterable, Protocol, Sequence

from diproxy.load import RoleLoad

LabelValues = tuple[str, ...]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Gaps between streamed chunks: a decode step takes tens of milliseconds, so the buckets are fine there (CloudWatch
# percentiles from bucket midpoints are right to within half a bucket, 2.5 ms between 10 and 50 ms).
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.06, 0.075,
                       0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Iterable[str], values: Iterable[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class Metric(Protocol):
    """Anything that renders itself as exposition lines."""

    def render(self) -> list[str]: ...


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(self.values.items())]
        return lines


class Gauge:
    """A gauge (or a counter, with kind="counter") read at scrape time from a callback returning
    {label values: value}."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...],
                 read: Callable[[], dict[LabelValues, float]], kind: str = "gauge") -> None:
        self.name, self.help, self.label_names, self.read, self.kind = name, help_text, labels, read, kind

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        lines += [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(self.read().items())]
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.label_names, self.buckets = name, help_text, labels, buckets
        self.series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:  # not setdefault: that would build a default series on every call
            series = self.series[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        counts, totals = series
        counts[bisect.bisect_left(self.buckets, value)] += 1
        totals[0] += value

    def count(self, *labels: str) -> int:
        return sum(self.series.get(labels, ([0], [0.0]))[0])

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, (counts, totals) in sorted(self.series.items()):
            running = 0
            for bound, count in zip(self.buckets, counts):
                running += count
                le = 'le="' + str(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            running += counts[-1]
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(self.label_names, key, inf)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(totals[0])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class ProxyMetrics:
    def __init__(self, pool_sizes: Callable[[], dict[LabelValues, float]],
                 worker_in_flight: Callable[[], dict[LabelValues, float]],
                 worker_backoff: Callable[[], dict[LabelValues, float]] = dict, engine: str = "",
                 load_roles: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic,
                 engine_metrics: Sequence[Metric] = (), in_flight: Callable[[], int] = lambda: 0) -> None:
        self.requests = Counter("diproxy_requests_total", "Client requests by endpoint and final HTTP status.",
                                ("endpoint", "status"))
        self.errors = Counter("diproxy_errors_total", "Failures by kind (upstream ones counted per attempt).", ("kind",))
        self.retries = Counter("diproxy_retries_total", "Upstream calls re-sent to another worker (or pair).")
        # The engine protocol's own metrics (diproxy/protocols/<engine> metrics), rendered after the shared counters.
        self.engine_metrics = tuple(engine_metrics)
        self.ttft = Histogram("diproxy_time_to_first_token_seconds",
                              "From request arrival to the first byte of the answer sent to the client.", ("endpoint",))
        self.latency = Histogram("diproxy_request_duration_seconds", "From request arrival to the end of the answer.",
                                 ("endpoint",))
        self.inter_token = Histogram("diproxy_inter_token_latency_seconds",
                                     "Between successive chunks of a stream written to the client ([DONE] alone not "
                                     "counted).", buckets=INTER_TOKEN_BUCKETS)
        self.load = RoleLoad(load_roles, clock)
        self._gauges = [
            Gauge("diproxy_pool_workers", "Workers known per role and state.", ("role", "state"), pool_sizes),
            Gauge("diproxy_worker_in_flight", "Requests in flight per worker.", ("role", "worker"), worker_in_flight),
            Gauge("diproxy_worker_backoff_seconds", "Back-off left after refused connections, per backed-off worker.",
                  ("role", "worker"), worker_backoff),
            Gauge("diproxy_engine_info", "The engine protocol this proxy speaks (always 1).", ("engine",),
                  lambda: {(engine,): 1.0}),
            Gauge("diproxy_load_per_endpoint", "Requests in the role's phase (prefill: waiting for or in prefill; "
                  "decode: past prefill; standard: all) per healthy endpoint of the role, at least 1.", ("role",),
                  self.load.per_endpoint),
            Gauge("diproxy_load_request_seconds_total", "Integral over time of the requests in the role's phase; "
                  "its increase over an interval divided by the interval's length is their average number.",
                  ("role",), self.load.request_seconds, "counter"),
            Gauge("diproxy_load_endpoint_seconds_total", "Integral over time of the role's healthy endpoints "
                  "(at least 1).", ("role",), self.load.endpoint_seconds, "counter"),
        ]
        # Read from the admission count (diproxy/admission.py), the one count of requests admitted and not yet ended;
        # a request refused with 429 never enters it.
        self._gauges.append(Gauge("diproxy_in_flight_requests", "Client requests admitted and not yet ended.", (),
                                  lambda: {(): float(in_flight())}))
        # The conventional name, so any scraper (and the CloudWatch shipper) can tell a restart from a counter reset.
        started = time.time()
        self._gauges.append(Gauge("process_start_time_seconds", "Start time of the process since the Unix epoch.", (),
                                  lambda: {(): started}))

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.errors, self.retries, *self.engine_metrics, self.ttft, self.latency,
                       self.inter_token, *self._gauges):
            lines += metric.render()
        return "\n".join(lines) + "\n"
