"""KV-transfer panels and alarms, the correctness canary's schedule and alarm, and the worker role's right to publish
the EFA counters (model/observability/kv_telemetry.py says what each collector emits and why).

Alarms (each only where its signal exists):
- nixl-transfer-failures: vLLM's NIXL connector counted failed transfers (engine nixl, disaggregated).
- nixl-metrics-missing: prefill counts prompt tokens but no NIXL counter arrives: the names are not what this image
  exports (UNVERIFIED on the Neuron image) or the connector's metrics are off. A panel would only stay empty.
- kv-tcp-fallback: prompts reach prefill while the fleets' EFA RDMA byte counters stay flat: KV is not riding RDMA
  (libfabric built without EFA, a TCP provider, or KV recomputed at decode). Only where NIXL runs LIBFABRIC.
- canary-mismatch: the canary's prefill->decode answer differed from the decode's own.
- kv-handoff-slow: the proxy's handoff time (prefill answered to decode started, KvHandoffTime) has a p99 above what
  moving a prefill endpoint's whole device memory over the instance's EFA would take
  (model/observability/kv_telemetry.py handoff_bound_seconds). Only where KV rides EFA and the DiStack proxy runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from model import naming
from model.config import DeploymentConfig
from model.observability import agent_config as agent
from model.observability import kv_telemetry as kv

if TYPE_CHECKING:
    from stacks.components.monitoring import Monitoring
    from stacks.components.node_role import NodeRole

PERIOD_MINUTES = 5
# The TCP-fallback signature over three 5-minute periods: at least this many prompt tokens prefilled, and fewer EFA
# RDMA bytes than this moved by all fleets together. One prompt token's KV is tens to hundreds of KiB (layers x KV
# heads x head size x 2 x dtype), so 1,000 tokens over EFA move far more than 1 MiB.
FALLBACK_MIN_TOKENS = 1000
FALLBACK_MAX_RDMA_BYTES = 1024 * 1024
FALLBACK_PERIODS = 3
MISSING_PERIODS = 3
# The canary's schedule: a State Manager association runs the Canary document on the control host. Associations
# run on a rate of 30 minutes at the shortest ("rate(30 minutes)" is the minimum:
# https://docs.aws.amazon.com/systems-manager/latest/userguide/reference-cron-and-rate-expressions.html, "Association
# rate expressions"), which bounds the canary's cost to a few dozen tokens per pair and hour.
CANARY_RATE_MINUTES = 30
CANARY_NAMESPACE = naming.PROXY_METRICS_NAMESPACE


def canary_runs(config: DeploymentConfig) -> bool:
    """The canary speaks NIXL's kv_transfer_params and publishes with the control host's right to DiStack/Proxy."""
    return kv.nixl_engine(config) and config.proxy == "distack"


def handoffs_shipped(config: DeploymentConfig) -> bool:
    """The DiStack proxy tracks NIXL handoffs (diproxy/handoffs.py) and its shipper publishes them."""
    return kv.nixl_engine(config) and config.proxy == "distack"


def allow_efa_metrics(role: "NodeRole", config: DeploymentConfig) -> None:
    """Workers with EFA publish the agent's efa input (PutMetricData into DiStack/Efa) and read their own
    aws:autoscaling:groupName tag for its AutoScalingGroupName dimension (ec2:DescribeTags has no resource type:
    https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html)."""
    if not any(kv.efa_collected(config, name) for name in config.fleets):
        return
    role.allow_metrics(kv.EFA_NAMESPACE)
    role.role.add_to_principal_policy(iam.PolicyStatement(actions=["ec2:DescribeTags"], resources=["*"]))


class KvTelemetry(Construct):
    """Adds the alarms to ``monitoring.alarms`` at creation and the panels with ``widgets()``."""

    def __init__(self, monitoring: "Monitoring", construct_id: str, *, config: DeploymentConfig,
                 fleet_group_names: Mapping[str, str]) -> None:
        super().__init__(monitoring, construct_id)
        self.m, self.config, self.env = monitoring, config, config.name
        self.groups = {name: group for name, group in fleet_group_names.items() if kv.efa_collected(config, name)}
        self.di_roles = [r for r in ("prefill", "decode")
                         if any(ep.role == r for f in config.fleets.values() for ep in f.resolved_endpoints)]
        if kv.nixl_engine(config):
            self._failure_alarm()
            self._missing_alarm()
        if kv.kv_over_efa(config) and self.groups:
            self._fallback_alarm()
        if canary_runs(config):
            self._canary()
        self.handoff_bound = kv.handoff_bound_seconds(config) if handoffs_shipped(config) else None
        if self.handoff_bound is not None:
            self._handoff_alarm(self.handoff_bound)

    # Metrics

    def _role(self, name: str, role: str, statistic: str = "Sum", minutes: int = PERIOD_MINUTES) -> cw.Metric:
        return self.m.worker(name, statistic, minutes=minutes, label=role, Role=role)

    def _prompt_tokens(self, minutes: int = PERIOD_MINUTES) -> cw.Metric:
        return self._role(kv.PROMPT_TOKENS, "prefill", minutes=minutes)

    def _rdma_bytes(self, minutes: int = PERIOD_MINUTES, fleets: Mapping[str, str] | None = None,
                    label: str = "EFA RDMA bytes", prefix: str = "e") -> cw.MathExpression:
        using = {f"{prefix}{i}x{j}": cw.Metric(namespace=kv.EFA_NAMESPACE, metric_name=name, statistic="Sum",
                                       period=cdk.Duration.minutes(minutes), dimensions_map={kv.EFA_DIMENSION: group})
                 for i, group in enumerate((fleets or self.groups).values())
                 for j, name in enumerate(kv.EFA_RDMA_BYTES)}
        return cw.MathExpression(expression=" + ".join(f"FILL({k}, 0)" for k in using), using_metrics=using,
                                 label=label, period=cdk.Duration.minutes(minutes))

    def _sum_over_roles(self, name: str, label: str, statistic: str = "Sum") -> cw.MathExpression:
        using = {f"r{i}": self._role(name, role, statistic) for i, role in enumerate(self.di_roles)}
        return cw.MathExpression(expression=" + ".join(f"FILL({k}, 0)" for k in using) or "0", using_metrics=using,
                                 label=label, period=cdk.Duration.minutes(PERIOD_MINUTES))

    def _canary_metric(self, name: str, statistic: str = "Sum", label: str | None = None) -> cw.Metric:
        return cw.Metric(namespace=CANARY_NAMESPACE, metric_name=name, statistic=statistic, label=label,
                         period=cdk.Duration.minutes(CANARY_RATE_MINUTES),
                         dimensions_map={agent.DEPLOYMENT: self.env})

    # Alarms

    def _alarm(self, construct_id: str, short: str, metric: cw.IMetric, description: str, *, periods: int = 1,
               threshold: float = 0, missing: cw.TreatMissingData = cw.TreatMissingData.NOT_BREACHING) -> None:
        alarm = cw.Alarm(self, construct_id, alarm_name=f"distack-{self.env}-{short}", metric=metric,
                         threshold=threshold, comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                         evaluation_periods=periods, datapoints_to_alarm=periods, treat_missing_data=missing,
                         alarm_description=description)
        self.m._notify(short, alarm)

    def _failure_alarm(self) -> None:
        self._alarm("NixlTransferFailures", "nixl-transfer-failures",
                    self._sum_over_roles(kv.NIXL_FAILED_TRANSFERS, "failed NIXL transfers"),
                    f"vLLM's NIXL connector on {self.env} counted failed KV transfers in the last {PERIOD_MINUTES} "
                    f"minutes (vllm:nixl_num_failed_transfers). Run first: dictl status --env {self.env}, then "
                    f"dictl canary --env {self.env} (does DI still answer right?) and dictl logs --env {self.env} "
                    "(the endpoints' NIXL and libfabric messages).")

    def _missing_alarm(self) -> None:
        using = {"tokens": self._prompt_tokens(), "seen": self._sum_over_roles(
            kv.NIXL_FAILED_TRANSFERS, "NIXL counter samples", statistic="SampleCount")}
        expression = cw.MathExpression(expression="IF(FILL(tokens, 0) > 0 AND seen == 0, 1, 0)", using_metrics=using,
                                       label="prefill busy, no NIXL counters", period=cdk.Duration.minutes(PERIOD_MINUTES))
        self._alarm("NixlMetricsMissing", "nixl-metrics-missing", expression,
                    f"Prefill on {self.env} counted prompt tokens for {MISSING_PERIODS * PERIOD_MINUTES} minutes but "
                    "no endpoint reported vLLM's NIXL counters (vllm:nixl_num_failed_transfers_total): this image's "
                    "connector does not export them under that name, so transfer failures would go unseen. Run first: "
                    f"dictl status --env {self.env}; compare the names on an endpoint's /metrics with "
                    "model/observability/kv_telemetry.py.", periods=MISSING_PERIODS)

    def _fallback_alarm(self) -> None:
        using = {"tokens": self._prompt_tokens(), "rdma": self._rdma_bytes()}
        expression = cw.MathExpression(
            expression=f"IF(FILL(tokens, 0) >= {FALLBACK_MIN_TOKENS} AND rdma < {FALLBACK_MAX_RDMA_BYTES}, 1, 0)",
            using_metrics=using, label="DI traffic without EFA RDMA", period=cdk.Duration.minutes(PERIOD_MINUTES))
        self._alarm("KvTcpFallback", "kv-tcp-fallback", expression,
                    f"Prefill on {self.env} has prefilled prompts for {FALLBACK_PERIODS * PERIOD_MINUTES} minutes "
                    "while the workers' EFA RDMA byte counters stayed flat: KV is not moving over EFA (NIXL on a TCP "
                    "provider, libfabric without EFA, or decode recomputing). Run first: dictl status --env "
                    f"{self.env}, then dictl preflight --env {self.env} (libfabric's efa provider) and dictl canary "
                    f"--env {self.env}.", periods=FALLBACK_PERIODS)

    def _handoff_alarm(self, bound: float) -> None:
        self._alarm("KvHandoffSlow", "kv-handoff-slow",
                    self.m.proxy(kv.HANDOFF_TIME, "p99", minutes=PERIOD_MINUTES, label="handoff time p99"),
                    f"The p99 of the proxy's KV handoff time on {self.env} (a prefill's answer to its decode's start) "
                    f"stayed above {bound:g} s for {FALLBACK_PERIODS * PERIOD_MINUTES} minutes: longer than moving a "
                    "prefill endpoint's whole device memory over the instance's EFA takes. KV is not moving at EFA "
                    "speed (TCP fallback, a failing link) or decode is saturated. Run first: dictl status --env "
                    f"{self.env}, then dictl canary --env {self.env} and dictl preflight --env {self.env}.",
                    periods=FALLBACK_PERIODS, threshold=bound * 1000)

    def _canary(self) -> None:
        self._alarm("CanaryMismatch", "canary-mismatch", self._canary_metric("CanaryMismatches"),
                    f"The correctness canary of {self.env} got different token ids through a prefill->decode pair "
                    "than from the same decode alone: KV arrives corrupted or from the wrong blocks. The dashboard's "
                    f"canary panel names the pair (CanaryMatch 0). Run first: dictl canary --env {self.env}, then dictl status "
                    f"--env {self.env}.")
        stack = cdk.Stack.of(self)
        # Runs the Canary document (stacks/documents/canary.yaml) on the control host, found by its tags.
        ssm.CfnAssociation(
            self, "CanarySchedule", name=naming.ssm_document(self.env, "canary"),
            association_name=f"distack-{self.env}-canary",
            schedule_expression=f"rate({CANARY_RATE_MINUTES} minutes)",
            parameters={"period": [str(CANARY_RATE_MINUTES * 60)]},
            targets=[ssm.CfnAssociation.TargetProperty(key=f"tag:{naming.TAG_DEPLOYMENT}", values=[self.env]),
                     ssm.CfnAssociation.TargetProperty(key=f"tag:{naming.TAG_ROLE}", values=[naming.ROLE_CONTROL])],
            max_concurrency="1", max_errors="1", compliance_severity="HIGH",
            apply_only_at_cron_interval=True)
        # The association names the document, which CloudFormation must create first (di_stack.py builds the
        # documents before the monitoring).
        documents = stack.node.try_find_child("OpsDocuments")
        if documents is not None:
            self.node.find_child("CanarySchedule").node.add_dependency(documents)

    # Panels

    def widgets(self, board: cw.Dashboard) -> None:
        row: list[cw.IWidget] = []
        if self.groups:
            row.append(cw.GraphWidget(
                title="KV over EFA: RDMA bytes/s per fleet (agent efa input)", width=8,
                left_y_axis=cw.YAxisProps(min=0),
                left=[cw.MathExpression(expression=f"t{n} / 60", label=name, period=cdk.Duration.minutes(1),
                                        using_metrics={f"t{n}": self._rdma_bytes(1, {name: group}, name, f"f{n}e")})
                      for n, (name, group) in enumerate(self.groups.items())]))
        if kv.nixl_engine(self.config):
            row.append(cw.GraphWidget(
                title="NIXL failed transfers, failed notifications, expired KV (per minute)", width=8,
                left_y_axis=cw.YAxisProps(min=0),
                left=[self._role(name, role, minutes=1).with_(label=f"{role} {short}")
                      for name, short in ((kv.NIXL_FAILED_TRANSFERS, "failed"),
                                          (kv.NIXL_FAILED_NOTIFICATIONS, "notif. failed"),
                                          (kv.NIXL_EXPIRED_REQUESTS, "expired"))
                      for role in self.di_roles]))
        if canary_runs(self.config):
            dims = f"{agent.DEPLOYMENT},Pair"
            row.append(cw.GraphWidget(
                title="Correctness canary (per run; CanaryMatch 0 names a bad pair)", width=8,
                left=[self._canary_metric("CanaryMismatches", label="mismatches"),
                      self._canary_metric("CanaryChecks", label="pairs checked"),
                      self._canary_metric("CanaryErrors", label="errors"),
                      self._canary_metric("CanarySkipped", label="skipped (saturated)")],
                right=[cw.MathExpression(
                    expression=f"SEARCH('{{{CANARY_NAMESPACE},{dims}}} MetricName=\"CanaryMatch\" "
                               f"{agent.DEPLOYMENT}=\"{self.env}\"', 'Minimum', {CANARY_RATE_MINUTES * 60})",
                    label="", period=cdk.Duration.minutes(CANARY_RATE_MINUTES))],
                left_y_axis=cw.YAxisProps(min=0), right_y_axis=cw.YAxisProps(min=0, max=1)))
        if handoffs_shipped(self.config):
            row.append(self._handoff_panel())
        gpu = [name for name in self.config.fleets if kv.gpu_fleet(self.config, name)]
        if gpu:
            row.append(cw.GraphWidget(
                title="GPU utilization per fleet (DCGM, %)", width=8, left_y_axis=cw.YAxisProps(min=0, max=100),
                left=[self.m.worker(kv.DCGM_GPU_UTIL, "Average", label=f, Fleet=f) for f in gpu]))
        if row:
            board.add_widgets(*row)

    def _handoff_panel(self) -> cw.GraphWidget:
        """The proxy's handoff time p50/p99 (with the EFA bound where there is one), its pending handoffs and the
        releases of clients that left after prefill."""
        bound = [cw.HorizontalAnnotation(value=self.handoff_bound * 1000, label="EFA bound")] \
            if self.handoff_bound is not None else []
        return cw.GraphWidget(
            title="KV handoffs: prefill answered to decode started (proxy)", width=8,
            left=[self.m.proxy(kv.HANDOFF_TIME, stat, label=f"handoff time {stat} (ms)") for stat in ("p50", "p99")],
            right=[self.m.proxy(kv.HANDOFFS_PENDING, "Maximum", label="pending handoffs"),
                   *(self.m.proxy(kv.KV_RELEASES, "Sum", label=f"releases {outcome}", Outcome=outcome)
                     for outcome in ("released", "failed", "dropped"))],
            left_annotations=bound, left_y_axis=cw.YAxisProps(min=0), right_y_axis=cw.YAxisProps(min=0))
