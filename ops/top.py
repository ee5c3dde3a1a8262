"""`dictl top`: the dashboard's figures as a live terminal view, one row per endpoint, read from CloudWatch.

The deployment's live instances (EC2 tags) and the config's endpoints give the rows; one GetMetricData call per 500
queries reads the latest minute of every figure: per endpoint vLLM's running and waiting requests and KV-cache
usage, per instance NeuronCore utilization (the nodes' CloudWatch agent), and at the top the proxy's TTFT, ITL,
requests and 5xx (its shipper). A figure CloudWatch has no data point for shows as "-".
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from ops.aws import pages
from ops.targets import Deployment, Selection
from model import naming
from model.observability import agent_config as agent

# GetMetricData takes at most 500 queries per call:
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_GetMetricData.html
MAX_QUERIES = 500
PERIOD_SECONDS = 60
# Agents and the shipper publish once a minute and CloudWatch needs a little longer: look back far enough that the
# latest complete minute is always inside the window.
WINDOW_MINUTES = 5


@dataclass(frozen=True)
class Query:
    """One figure: where it is shown (row key and column), and the metric and statistic that give it."""

    row: str
    column: str
    namespace: str
    metric: str
    stat: str
    dimensions: tuple[tuple[str, str], ...]

    def request(self, query_id: str) -> dict[str, Any]:
        return {"Id": query_id, "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": self.namespace, "MetricName": self.metric,
                       "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions]},
            "Period": PERIOD_SECONDS, "Stat": self.stat}}


@dataclass
class Row:
    role: str
    fleet: str
    instance: str
    port: int
    values: dict[str, float | None] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.instance}:{self.port}"


ENDPOINT_COLUMNS = (("running", agent.RUNNING, "Maximum"), ("waiting", agent.WAITING, "Maximum"))
PROXY_COLUMNS = (("requests_per_min", "Requests", "Sum"), ("server_errors_per_min", "ServerErrorResponses", "Sum"),
                 ("ttft_p50_ms", "TimeToFirstToken", "p50"), ("ttft_p99_ms", "TimeToFirstToken", "p99"),
                 ("itl_p50_ms", "InterTokenLatency", "p50"), ("itl_p99_ms", "InterTokenLatency", "p99"))
PROXY_ROW = "proxy"


def endpoint_rows(deployment: Deployment) -> list[Row]:
    """One row per endpoint of every live worker instance, in fleet, instance, port order."""
    fleets = deployment.config.fleets
    rows = []
    for instance in deployment.instances(Selection()):
        fleet = fleets.get(instance.fleet)
        if fleet is None or instance.state != "running":
            continue
        rows += [Row(ep.role, instance.fleet, instance.instance_id, ep.port) for ep in fleet.resolved_endpoints]
    return rows


def queries(deployment: Deployment, rows: Sequence[Row]) -> list[Query]:
    config, env = deployment.config, deployment.name
    found = []
    if config.runs_distack_proxy:
        found += [Query(PROXY_ROW, column, naming.PROXY_METRICS_NAMESPACE, metric, stat, ((agent.DEPLOYMENT, env),))
                  for column, metric, stat in PROXY_COLUMNS]
    kv = agent.kv_cache_metric(config)
    for row in rows:
        endpoint = ((agent.DEPLOYMENT, env), (agent.FLEET, row.fleet), (agent.ROLE, row.role),
                    (agent.INSTANCE, row.instance), (agent.PORT, str(row.port)))
        instance = ((agent.DEPLOYMENT, env), (agent.FLEET, row.fleet),
                    (agent.ROLE, config.fleets[row.fleet].role), (agent.INSTANCE, row.instance))
        found += [Query(row.key, column, naming.WORKER_METRICS_NAMESPACE, metric, stat, endpoint)
                  for column, metric, stat in ENDPOINT_COLUMNS]
        found.append(Query(row.key, "kv_cache", naming.WORKER_METRICS_NAMESPACE, kv, "Maximum", endpoint))
        found.append(Query(row.key, "neuroncore_util", naming.WORKER_METRICS_NAMESPACE, agent.NEURONCORE_UTILIZATION,
                           "Average", instance))
    return found


def latest(cloudwatch: Any, wanted: Sequence[Query], now: datetime) -> dict[tuple[str, str], float | None]:
    """The newest value of every query, in calls of at most MAX_QUERIES (each followed through NextToken)."""
    values: dict[tuple[str, str], float | None] = {(q.row, q.column): None for q in wanted}
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(minutes=WINDOW_MINUTES)
    for first in range(0, len(wanted), MAX_QUERIES):
        batch = {f"q{first + i}": q for i, q in enumerate(wanted[first:first + MAX_QUERIES])}
        request = {"MetricDataQueries": [q.request(i) for i, q in batch.items()], "StartTime": start,
                   "EndTime": end, "ScanBy": "TimestampDescending"}
        for response in pages(cloudwatch.get_metric_data, **request):
            for result in response.get("MetricDataResults", []):
                q = batch[result["Id"]]
                if result.get("Values") and values[(q.row, q.column)] is None:
                    values[(q.row, q.column)] = float(result["Values"][0])
    return values


@dataclass
class Snapshot:
    deployment: str
    at: datetime
    proxy: dict[str, float | None] | None
    rows: list[Row]

    def as_json(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "at": self.at.isoformat(), "proxy": self.proxy,
                "endpoints": [{"role": r.role, "fleet": r.fleet, "instance_id": r.instance, "port": r.port,
                               **r.values} for r in self.rows]}


def snapshot(deployment: Deployment, now: datetime | None = None) -> Snapshot:
    now = now or datetime.now(timezone.utc)
    rows = endpoint_rows(deployment)
    wanted = queries(deployment, rows)
    values = latest(deployment.clients.get("cloudwatch"), wanted, now)
    for row in rows:
        row.values = {column: values.get((row.key, column)) for column in
                      ("running", "waiting", "kv_cache", "neuroncore_util")}
    proxy = ({column: values[(PROXY_ROW, column)] for column, _, _ in PROXY_COLUMNS}
             if deployment.config.runs_distack_proxy else None)
    return Snapshot(deployment.name, now, proxy, rows)


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render(shot: Snapshot) -> Any:
    """A rich renderable: the proxy's figures as the title, one table row per endpoint."""
    from rich.table import Table

    if shot.proxy is None:
        caption = "proxy: neuron publishes no metrics (no TTFT, ITL, requests or 5xx)"
    else:
        p = shot.proxy
        caption = (f"proxy  TTFT p50/p99 {_number(p['ttft_p50_ms'])}/{_number(p['ttft_p99_ms'])} ms   "
                   f"ITL p50/p99 {_number(p['itl_p50_ms'], 1)}/{_number(p['itl_p99_ms'], 1)} ms   "
                   f"requests {_number(p['requests_per_min'])}/min   5xx {_number(p['server_errors_per_min'])}/min")
    table = Table(title=f"DiStack {shot.deployment}  {shot.at:%H:%M:%S} UTC\n{caption}", title_justify="left",
                  caption="latest minute in CloudWatch; - = no data point (agent not running, or idle)")
    for name, justify in (("ROLE", "left"), ("FLEET", "left"), ("INSTANCE", "left"), ("PORT", "right"),
                          ("IN FLIGHT", "right"), ("QUEUED", "right"), ("KV CACHE", "right"),
                          ("NEURONCORE", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in shot.rows:
        v = r.values
        table.add_row(r.role, r.fleet, r.instance, str(r.port), _number(v.get("running")),
                      _number(v.get("waiting")), _percent(v.get("kv_cache")), _percent(v.get("neuroncore_util")))
    if not shot.rows:
        table.add_row("-", "-", "no running worker instance", "", "", "", "", "")
    return table


def run(deployment: Deployment, *, once: bool, as_json: bool, interval: float,
        sleep: Callable[[float], None] = time.sleep) -> int:
    """Print one snapshot (--once, or --json), or refresh the view every `interval` seconds until Ctrl-C."""
    if as_json or once:
        shot = snapshot(deployment)
        if as_json:
            print(json.dumps(shot.as_json(), indent=2))
        else:
            from rich.console import Console

            Console().print(render(shot))
        return 0
    from rich.live import Live

    try:
        with Live(render(snapshot(deployment)), auto_refresh=False, screen=False) as live:
            while True:
                sleep(interval)
                live.update(render(snapshot(deployment)), refresh=True)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0
