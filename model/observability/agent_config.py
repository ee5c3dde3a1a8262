"""The CloudWatch agent's configuration for each kind of node, generated from the deployment's config.

Each node kind (a worker fleet, the control host) gets two documents, stored as SSM parameters by the stack and read
by userdata/metrics-agent.sh at boot: the agent's JSON (`amazon-cloudwatch-agent-ctl -c ssm:NAME`) and the
Prometheus scrape configuration that JSON points at. The agent scrapes each vLLM endpoint's /metrics, the local
neuron-monitor exporter (workers) or etcd (control host), keeps only the series named here, and sends them as
Embedded Metric Format records to the deployment's `metrics` log group, which turns them into CloudWatch metrics.
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch-Agent-PrometheusEC2.html

The agent drops Prometheus histograms (aws/amazon-cloudwatch-agent:plugins/inputs/prometheus/metrics_filter.go
@ab55b8daa204e95c42c0267ee5aa49ec3b3a7317: "Only Gauge, Counter and Summary are supported"), so vLLM's TTFT and
inter-token histograms are not kept; the DiStack proxy's shipper publishes TTFT and ITL distributions instead.
Pure Python (no aws_cdk): `dictl top` and the tests read the same definitions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

import yaml

from model import engines, naming, proxies
from model.config import DeploymentConfig
from model.observability import kv_telemetry, upstream

# Where metrics-agent.sh writes the scrape configuration (the agent JSON names this path).
SCRAPE_CONFIG_PATH = "/etc/di/metrics-agent/prometheus.yaml"
# The scrape configuration is generated at synth, when no instance exists yet: the node replaces this word with
# its own instance ID before the agent reads the file (the agent does not expand variables in it).
INSTANCE_PLACEHOLDER = "__DI_INSTANCE_ID__"
# The DiStack proxy's unit (diproxy/deploy/distack-proxy.service) and its stream in the container log group.
PROXY_UNIT = proxies.DISTACK.unit
PROXY_LOG_STREAM = "distack-proxy"
# One sample per series and minute: a per-minute Sum over a role's endpoints is then their total.
SCRAPE_INTERVAL_SECONDS = 60
# Standard SSM parameters hold at most 4 KB: https://docs.aws.amazon.com/systems-manager/latest/userguide/parameter-store-advanced-parameters.html
PARAMETER_LIMIT_BYTES = 4096

DEPLOYMENT, FLEET, ROLE, INSTANCE, PORT = "Deployment", "Fleet", "Role", "InstanceId", "Port"
PER_ENDPOINT = (DEPLOYMENT, FLEET, ROLE, INSTANCE, PORT)
PER_ROLE = (DEPLOYMENT, ROLE)
PER_FLEET = (DEPLOYMENT, FLEET)
PER_INSTANCE = (DEPLOYMENT, FLEET, ROLE, INSTANCE)
PER_DEPLOYMENT = (DEPLOYMENT,)

JOB_VLLM, JOB_NEURON, JOB_ETCD = "vllm", "neuron", "etcd"

# vLLM renamed its KV-cache gauge in V1 (upstream.VLLM_V1); each engine names the one its image exports
# (model/engines/<engine>.py kv_cache_metric). lmcache: LMCache's image runs vLLM V1, which names the gauge
# kv_cache_usage_perc like the nixl images (UNVERIFIED for the pinned lmcache/vllm-openai tag: a wrong name shows as an
# empty KV-cache widget, not a failure).
KV_CACHE_METRICS = tuple(sorted({engine.kv_cache_metric for engine in engines.ENGINES.values()}))
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
NEURONCORE_UTILIZATION = "neuroncore_utilization_ratio"
DEVICE_MEMORY = "neuron_runtime_memory_used_bytes"
EXECUTION_ERRORS = "execution_errors_total"


@dataclass(frozen=True)
class Kept:
    """One Prometheus series family the agent keeps: its job, unit, the dimension sets it is published under, and
    an optional (label, value) its samples must carry."""

    name: str
    job: str
    unit: str
    dimension_sets: tuple[tuple[str, ...], ...]
    only: tuple[str, str] | None = None


WORKER_KEPT: tuple[Kept, ...] = (
    Kept(RUNNING, JOB_VLLM, "Count", (PER_ENDPOINT, PER_ROLE)),
    Kept(WAITING, JOB_VLLM, "Count", (PER_ENDPOINT, PER_ROLE)),
    *(Kept(name, JOB_VLLM, "None", (PER_ENDPOINT, PER_ROLE)) for name in KV_CACHE_METRICS),
    Kept(NEURONCORE_UTILIZATION, JOB_NEURON, "None", (PER_FLEET, PER_INSTANCE)),
    Kept(DEVICE_MEMORY, JOB_NEURON, "Bytes", (PER_FLEET, PER_INSTANCE),
         only=("memory_location", upstream.NEURON_DEVICE_MEMORY)),
    # A counter: the agent sends the increase since its previous scrape (plugins/inputs/prometheus/
    # delta_calculator.go), so a minute's Sum is the errors of that minute.
    Kept(EXECUTION_ERRORS, JOB_NEURON, "Count", (PER_FLEET, PER_INSTANCE)),
    # KV transfer (model/observability/kv_telemetry.py): NIXL's failure counters and prefill's prompt tokens.
    *(Kept(name, JOB_VLLM, "Count", (PER_ROLE, PER_FLEET)) for name in kv_telemetry.NIXL_COUNTERS),
    Kept(kv_telemetry.PROMPT_TOKENS, JOB_VLLM, "Count", (PER_ROLE,)),
    *(Kept(name, kv_telemetry.JOB_DCGM, "None", (PER_FLEET, PER_INSTANCE)) for name in kv_telemetry.DCGM_METRICS),
)
CONTROL_KEPT: tuple[Kept, ...] = (
    Kept("etcd_server_has_leader", JOB_ETCD, "None", (PER_DEPLOYMENT,)),
    Kept("etcd_server_leader_changes_seen_total", JOB_ETCD, "Count", (PER_DEPLOYMENT,)),
    Kept("etcd_mvcc_db_total_size_in_bytes", JOB_ETCD, "Bytes", (PER_DEPLOYMENT,)),
)


@dataclass(frozen=True)
class AgentFiles:
    """What one node kind receives: the agent JSON and the Prometheus scrape configuration (YAML text)."""

    agent: dict[str, Any]
    scrape: str

    @property
    def agent_text(self) -> str:
        return json.dumps(self.agent, separators=(",", ":"), sort_keys=True)


def kv_cache_metric(config: DeploymentConfig) -> str:
    """The KV-cache gauge this deployment's engine exports."""
    return config.engine_module.kv_cache_metric


def worker_agent(config: DeploymentConfig, fleet_name: str) -> AgentFiles:
    """The agent configuration of one worker fleet: every endpoint's vLLM /metrics and the neuron-monitor exporter."""
    fleet = config.fleets[fleet_name]
    node = {DEPLOYMENT: config.name, FLEET: fleet_name, ROLE: fleet.role, INSTANCE: INSTANCE_PLACEHOLDER}
    endpoints = [{"targets": [f"127.0.0.1:{ep.port}"], "labels": {**node, ROLE: ep.role, PORT: str(ep.port)}}
                 for ep in fleet.resolved_endpoints]
    jobs = [_job(JOB_VLLM, endpoints, WORKER_KEPT),
            _job(JOB_NEURON, [{"targets": [f"127.0.0.1:{naming.NEURON_MONITOR_PORT}"], "labels": node}], WORKER_KEPT)]
    if kv_telemetry.gpu_fleet(config, fleet_name):
        jobs.append(_job(kv_telemetry.JOB_DCGM, [{"targets": [f"127.0.0.1:{kv_telemetry.DCGM_PORT}"],
                                                  "labels": node}], WORKER_KEPT))
    agent = _agent(config, naming.WORKER_METRICS_NAMESPACE, WORKER_KEPT)
    if kv_telemetry.efa_collected(config, fleet_name):
        agent["metrics"] = kv_telemetry.efa_metrics_section()
    return AgentFiles(agent, _scrape(jobs))


def control_agent(config: DeploymentConfig) -> AgentFiles:
    """The control host's agent configuration: etcd's /metrics (the proxy's metrics have their own shipper), and with
    `proxy: distack` the proxy's journal into the container log group, beside the containers' awslogs streams.

    The agent reads systemd units' journals from 1.300070.0 on (its RELEASE_NOTES; the `journald` section of
    translator/config/schema.json, vendored here); it keeps its cursor on disk, so a restart neither loses nor repeats
    lines. Each event is the journal entry as JSON, the line in `body.MESSAGE`.
    """
    node = {DEPLOYMENT: config.name, FLEET: naming.ROLE_CONTROL, ROLE: naming.ROLE_CONTROL, INSTANCE: INSTANCE_PLACEHOLDER}
    jobs = [_job(JOB_ETCD, [{"targets": [f"127.0.0.1:{naming.ETCD_METRICS_PORT}"], "labels": node}], CONTROL_KEPT)]
    agent = _agent(config, naming.CONTROL_METRICS_NAMESPACE, CONTROL_KEPT)
    if config.runs_distack_proxy:
        agent["logs"]["logs_collected"] = {"journald": {"collect_list": [{
            "log_group_name": naming.log_group(config.name, "containers"),
            "log_stream_name": f"{naming.ROLE_CONTROL}/{{instance_id}}/{PROXY_LOG_STREAM}",
            "units": [PROXY_UNIT]}]}}
    return AgentFiles(agent, _scrape(jobs))


def node_kinds(config: DeploymentConfig) -> dict[str, AgentFiles]:
    """Every node kind's agent configuration, by fleet name (the control host as `control`)."""
    kinds = {name: worker_agent(config, name) for name in config.fleets}
    kinds[naming.ROLE_CONTROL] = control_agent(config)
    return kinds


def published(config: DeploymentConfig) -> set[tuple[str, str, frozenset[str]]]:
    """(namespace, metric, dimension names) of every metric the agents of this deployment publish."""
    found = set()
    for namespace, kept in ((naming.WORKER_METRICS_NAMESPACE, WORKER_KEPT),
                            (naming.CONTROL_METRICS_NAMESPACE, CONTROL_KEPT)):
        found |= {(namespace, k.name, frozenset(dims)) for k in kept for dims in k.dimension_sets}
    return found | kv_telemetry.efa_published(config)


def _job(job: str, targets: list[dict[str, Any]], kept: Iterable[Kept]) -> dict[str, Any]:
    names = sorted(k.name for k in kept if k.job == job)
    return {
        "job_name": job, "scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s", "scrape_timeout": "10s",
        "static_configs": targets,
        # Everything else on /metrics is dropped on the node: each kept series becomes a billed custom metric.
        "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": "|".join(_quote(n) for n in names),
                                    "action": "keep"}],
    }


def _scrape(jobs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"global": {"scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s"}, "scrape_configs": jobs},
                          sort_keys=False, default_flow_style=False)


def _agent(config: DeploymentConfig, namespace: str, kept: tuple[Kept, ...]) -> dict[str, Any]:
    declarations = []
    groups: dict[tuple[str, tuple[tuple[str, ...], ...], tuple[str, str] | None], list[str]] = {}
    for k in kept:
        groups.setdefault((k.job, k.dimension_sets, k.only), []).append(k.name)
    for (job, dimension_sets, only), names in groups.items():
        # The agent skips a declaration without source_labels or metric_selectors without a word
        # (translator/translate/otel/exporter/awsemf/prometheus.go, setPrometheusMetricDeclarations).
        labels, matcher = ["job"], f"^{job}$"
        if only:
            labels, matcher = ["job", only[0]], f"^{job};{only[1]}$"
        declarations.append({"source_labels": labels, "label_separator": ";", "label_matcher": matcher,
                             "dimensions": [list(d) for d in dimension_sets],
                             "metric_selectors": [f"^{_quote(n)}$" for n in names]})
    return {
        "agent": {"region": config.region, "metrics_collection_interval": SCRAPE_INTERVAL_SECONDS},
        "logs": {
            "metrics_collected": {"prometheus": {
                # On EC2 the agent needs a log group name or refuses the configuration (same file,
                # setPrometheusLogGroup).
                "log_group_name": naming.log_group(config.name, naming.METRICS_LOG_KIND),
                "prometheus_config_path": SCRAPE_CONFIG_PATH,
                "emf_processor": {"metric_namespace": namespace, "metric_declaration_dedup": True,
                                  "metric_unit": {k.name: k.unit for k in kept},
                                  "metric_declaration": declarations},
            }},
            "force_flush_interval": 15,
        },
    }


def _quote(name: str) -> str:
    """A metric name as a literal inside a regular expression (names hold letters, digits, `_` and `:` only)."""
    return name.replace(".", r"\.")
