"""One CloudWatch dashboard and one alarm topic per deployment, from the metrics that exist today.

What feeds it: the DiStack proxy's shipper (namespace DiStack/Proxy, dimension Deployment, README "The proxy"), the
CloudWatch agent on every node (vLLM, neuron-monitor and etcd series in DiStack/Workers and DiStack/Control, as
model/observability/agent_config.py configures it), Auto Scaling group metrics (enabled on every group with
`group_metrics_collection`), and metric filters counting the "bootstrap failed: REASON" and "metrics agent failed:
REASON" events the node scripts write to the nodes log group. neuron-proxy-server publishes nothing, so with
proxy: neuron the proxy panels and alarms are left out and the dashboard says which; the worker panels stay.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct, IConstruct

from model import naming
from model.config import DeploymentConfig, MonitoringConfig
from model.observability import agent_config as agent
from stacks.observability.kv_alarms import KvTelemetry

# What the proxy's shipper publishes (diproxy/shipper/metric_data.py; the stack does not import the proxy's package,
# tests/test_monitoring.py checks these names against it).
DEPLOYMENT_DIMENSION = "Deployment"
PROXY_UP = "ProxyUp"
# Auto Scaling group metrics at one-minute granularity (no charge); the dashboard and the control-host alarm read
# desired and in-service, `dictl` and the console the rest.
# https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-metrics.html
GROUP_METRICS = ("GroupDesiredCapacity", "GroupInServiceInstances", "GroupPendingInstances",
                 "GroupTerminatingInstances", "GroupMinSize", "GroupMaxSize")
# What userdata/di-bootstrap's EXIT handler sends to the nodes log group (report_to_cloudwatch "bootstrap failed: ...").
BOOTSTRAP_FAILURE_PATTERN = '"bootstrap failed"'
BOOTSTRAP_FAILURES = "BootstrapFailures"
# What userdata/metrics-agent.sh sends when the agent or the Neuron exporter could not be set up.
METRICS_AGENT_FAILURE_PATTERN = '"metrics agent failed"'
METRICS_AGENT_FAILURES = "MetricsAgentFailures"
# The proxy's inter-token latency distribution (diproxy/shipper/metric_data.py RULES): vLLM's own ITL histogram does
# not reach CloudWatch, the agent drops histograms (model/observability/agent_config.py).
INTER_TOKEN_LATENCY = "InterTokenLatency"
# Neuron runtime execution errors (neuron-monitor's error counters) a fleet may have in 5 minutes before the alarm.
NEURON_ERRORS_PERIOD_MINUTES = 5
NEURON_ERRORS_THRESHOLD = 1
# etcd's database size (the control agent keeps it, model/observability/agent_config.py) and the share of the quota
# that alarms.
ETCD_DB_SIZE = "etcd_mvcc_db_total_size_in_bytes"
ETCD_QUOTA_ALARM_SHARE = 0.8
# The proxy's pool roles: prefill/decode workers, or standard mode's standalone endpoints (diproxy/workers.py).
DI_POOL_ROLES = ("prefill", "decode")
STANDARD_POOL_ROLES = ("standalone",)
CONTROL_DOWN_MINUTES = 5
TTFT_PERIOD_MINUTES = 5
TTFT_PERIODS = 3
ERROR_RATE_PERIOD_MINUTES = 5


def group_metrics_collection() -> list[autoscaling.CfnAutoScalingGroup.MetricsCollectionProperty]:
    """MetricsCollection for a CfnAutoScalingGroup: the group metrics the dashboard and alarms read."""
    return [autoscaling.CfnAutoScalingGroup.MetricsCollectionProperty(granularity="1Minute",
                                                                      metrics=list(GROUP_METRICS))]


def node_metrics_namespace(env: str) -> str:
    """Namespace of the metric-filter metrics of one deployment's nodes log group (filters set no static dimension)."""
    return f"DiStack/Nodes/{env}"


def dashboard_name(env: str) -> str:
    return f"distack-{env}"


def dashboard_url(region: str, env: str) -> str:
    """Console address of the deployment's dashboard."""
    host = ("console.amazonaws-us-gov.com" if "-gov-" in region else f"{region}.console.aws.amazon.com")
    return f"https://{host}/cloudwatch/home?region={region}#dashboards:name={dashboard_name(env)}"


def pool_roles(config: DeploymentConfig) -> tuple[str, ...]:
    return STANDARD_POOL_ROLES if config.mode == "standard" else DI_POOL_ROLES


def fleets_serving(config: DeploymentConfig, pool_role: str) -> tuple[str, ...]:
    """The fleets whose endpoints the proxy counts in POOL_ROLE (a colocated fleet serves both DI roles)."""
    serving = {"prefill": ("prefill", "colocated"), "decode": ("decode", "colocated"), "standalone": ("standard",)}
    return tuple(name for name, fleet in config.fleets.items() if fleet.role in serving[pool_role])


class AlarmTopic(Construct):
    """The deployment's SNS topic for alarms: a customer-managed KMS key CloudWatch may use (the AWS-managed
    aws/sns key does not let CloudWatch alarms publish), TLS-only, publishing only by this account's alarms.

    Exposes ``topic`` and ``key``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, env_name: str, email: str | None) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        cloudwatch = iam.ServicePrincipal("cloudwatch.amazonaws.com")
        self.key = kms.Key(self, "Key", description=f"DiStack {env_name}: alarm topic messages",
                           enable_key_rotation=True, removal_policy=cdk.RemovalPolicy.DESTROY,
                           pending_window=cdk.Duration.days(7))
        # https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/Notify_Users_Alarm_Changes.html
        self.key.add_to_resource_policy(iam.PolicyStatement(
            principals=[cloudwatch], actions=["kms:Decrypt", "kms:GenerateDataKey*"], resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": stack.account}}))
        self.topic = sns.Topic(self, "Topic", topic_name=f"distack-{env_name}-alarms",
                               display_name=f"DiStack {env_name} alarms", master_key=self.key, enforce_ssl=True)
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            principals=[cloudwatch], actions=["sns:Publish"], resources=[self.topic.topic_arn],
            conditions={"StringEquals": {"aws:SourceAccount": stack.account},
                        "ArnLike": {"aws:SourceArn": stack.format_arn(
                            service="cloudwatch", resource="alarm", resource_name="*",
                            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)}}))
        if email:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))


class Monitoring(Construct):
    """Dashboard `distack-NAME` and the alarms of one deployment, every alarm into one topic.

    Exposes ``topic``, ``dashboard``, ``alarms`` (short name -> the alarm that notifies) and ``dashboard_url``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: DeploymentConfig, control_group_name: str,
                 fleet_group_names: Mapping[str, str], node_log_group: logs.ILogGroup,
                 pool_alarms_after: Sequence[IConstruct] = ()) -> None:
        """``pool_alarms_after``: what the no-usable-pair alarms wait for on stack creation (the worker groups,
        whose creation policies complete once nodes have bootstrapped), so a new deployment's boot does not page."""
        super().__init__(scope, construct_id)
        self.pool_alarms_after = tuple(pool_alarms_after)
        self.env_name = env = config.name
        self.settings: MonitoringConfig = config.monitoring
        self.proxy_metrics = config.runs_distack_proxy
        self.roles = pool_roles(config)
        self.topic = AlarmTopic(self, "AlarmTopic", env_name=env, email=self.settings.alarm_email).topic
        self.alarms: dict[str, cw.IAlarm] = {}
        self.dashboard_url = dashboard_url(config.region, env)

        groups = {naming.ROLE_CONTROL: control_group_name, **fleet_group_names}
        self.bootstrap_failures = logs.MetricFilter(
            self, "BootstrapFailureFilter", log_group=node_log_group,
            filter_pattern=logs.FilterPattern.literal(BOOTSTRAP_FAILURE_PATTERN),
            metric_namespace=node_metrics_namespace(env), metric_name=BOOTSTRAP_FAILURES, metric_value="1",
        ).metric(statistic="Sum", period=cdk.Duration.minutes(1))

        self.metrics_agent_failures = logs.MetricFilter(
            self, "MetricsAgentFailureFilter", log_group=node_log_group,
            filter_pattern=logs.FilterPattern.literal(METRICS_AGENT_FAILURE_PATTERN),
            metric_namespace=node_metrics_namespace(env), metric_name=METRICS_AGENT_FAILURES, metric_value="1",
        ).metric(statistic="Sum", period=cdk.Duration.minutes(1))
        self.fleets = {name: fleet.role for name, fleet in config.fleets.items()}
        self.fleet_groups = {role: [fleet_group_names[name] for name in fleets_serving(config, role)]
                             for role in self.roles}

        self._control_alarm(control_group_name)
        self._bootstrap_alarm()
        self._etcd_space_alarm()
        self._neuron_error_alarms()
        if self.proxy_metrics:
            self._pair_alarm()
            self._error_rate_alarm()
            self._ttft_alarm()
        # KV transfer and the correctness canary: alarms now (the alarm widget lists them), panels last.
        self.kv_telemetry = KvTelemetry(self, "KvTelemetry", config=config, fleet_group_names=fleet_group_names)
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=dashboard_name(env),
                                      default_interval=cdk.Duration.hours(3))
        self._widgets(config, groups, node_log_group)
        self.kv_telemetry.widgets(self.dashboard)

    # Metrics

    def proxy(self, name: str, statistic: str, *, minutes: int = 1, label: str | None = None,
              **dimensions: str) -> cw.Metric:
        """One metric the DiStack proxy's shipper publishes (diproxy/shipper/metric_data.py)."""
        return cw.Metric(namespace=naming.PROXY_METRICS_NAMESPACE, metric_name=name, statistic=statistic,
                         period=cdk.Duration.minutes(minutes), label=label,
                         dimensions_map={DEPLOYMENT_DIMENSION: self.env_name, **dimensions})

    def worker(self, name: str, statistic: str, *, label: str | None = None, minutes: int = 1,
               **dimensions: str) -> cw.Metric:
        """One metric the workers' CloudWatch agents publish (model/observability/agent_config.py)."""
        return cw.Metric(namespace=naming.WORKER_METRICS_NAMESPACE, metric_name=name, statistic=statistic,
                         period=cdk.Duration.minutes(minutes), label=label,
                         dimensions_map={agent.DEPLOYMENT: self.env_name, **dimensions})

    def per_endpoint(self, name: str, statistic: str, role: str) -> cw.MathExpression:
        """Every endpoint of ROLE, one line each: endpoints come and go with instances, so a search finds them."""
        dims = ",".join(agent.PER_ENDPOINT)
        return cw.MathExpression(
            expression=f"SEARCH('{{{naming.WORKER_METRICS_NAMESPACE},{dims}}} MetricName=\"{name}\" "
                       f"{agent.DEPLOYMENT}=\"{self.env_name}\" {agent.ROLE}=\"{role}\"', '{statistic}', 60)",
            label="", period=cdk.Duration.minutes(1))

    @staticmethod
    def group(group_name: str, metric: str, label: str | None = None) -> cw.Metric:
        return cw.Metric(namespace="AWS/AutoScaling", metric_name=metric, statistic="Maximum",
                         period=cdk.Duration.minutes(1), label=label,
                         dimensions_map={"AutoScalingGroupName": group_name})

    # Alarms

    def _name(self, short: str) -> str:
        return f"distack-{self.env_name}-{short}"

    def _notify(self, short: str, alarm: cw.AlarmBase, *, recovery: bool = False) -> None:
        action = cw_actions.SnsAction(self.topic)
        alarm.add_alarm_action(action)
        if recovery:
            alarm.add_ok_action(action)
        self.alarms[short] = alarm

    def _metric_alarm(self, construct_id: str, short: str, metric: cw.IMetric, *, threshold: float,
                      comparison: cw.ComparisonOperator, periods: int, missing: cw.TreatMissingData,
                      description: str, datapoints: int | None = None) -> cw.Alarm:
        return cw.Alarm(self, construct_id, alarm_name=self._name(short), metric=metric, threshold=threshold,
                        comparison_operator=comparison, evaluation_periods=periods,
                        datapoints_to_alarm=datapoints or periods, treat_missing_data=missing,
                        alarm_description=description)

    def _control_alarm(self, control_group_name: str) -> None:
        env, minutes = self.env_name, CONTROL_DOWN_MINUTES
        first = f"Run first: dictl status --env {env} --role control"
        children: list[cw.IAlarm] = [self._metric_alarm(
            "ControlNotInService", "control-not-in-service",
            self.group(control_group_name, "GroupInServiceInstances"),
            threshold=1, comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD, periods=minutes,
            missing=cw.TreatMissingData.BREACHING,
            description=f"The control host group of {env} has had no instance in service for {minutes} minutes "
                        f"(or no group metrics). {first}; the group's scaling activities show why.")]
        if self.proxy_metrics:
            children.append(self._metric_alarm(
                "ProxyMetricsMissing", "proxy-metrics-missing", self.proxy(PROXY_UP, "SampleCount"),
                threshold=1, comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD, periods=minutes,
                missing=cw.TreatMissingData.BREACHING,
                description=f"No ProxyUp data point from {env}'s control host for {minutes} minutes: the host or "
                            f"its distack-proxy-shipper is down. {first}."))
        rule = cw.AlarmRule.any_of(*[cw.AlarmRule.from_alarm(a, cw.AlarmState.ALARM) for a in children])
        composite = cw.CompositeAlarm(
            self, "ControlHostUnhealthy", composite_alarm_name=self._name("control-host-unhealthy"), alarm_rule=rule,
            alarm_description=f"The control host of {env} (etcd and the proxy) is down. {first}, then "
                              f"dictl logs --env {env} --role control (journal and container logs to S3).")
        self._notify("control-host-unhealthy", composite, recovery=True)

    def _bootstrap_alarm(self) -> None:
        env = self.env_name
        alarm = self._metric_alarm(
            "BootstrapFailed", "bootstrap-failed", self.bootstrap_failures, threshold=1,
            comparison=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD, periods=1,
            missing=cw.TreatMissingData.NOT_BREACHING,
            description=f"A node of {env} failed its bootstrap: the reason is the 'bootstrap failed:' event in "
                        f"{naming.log_group(env, 'nodes')} (stream FLEET/INSTANCE/bootstrap). Run first: "
                        f"dictl status --env {env}, then dictl logs --env {env} --instance-id ID.")
        self._notify("bootstrap-failed", alarm)

    def _etcd_space_alarm(self) -> None:
        """etcd's database near its backend quota: at the quota etcd raises NOSPACE and refuses every write, so no
        worker could register (https://etcd.io/docs/v3.5/op-guide/maintenance/#space-quota). Auto-compaction keeps a
        registry far below it; growth to 80 % means compaction or defragmentation is not keeping up."""
        env = self.env_name
        size = cw.Metric(namespace=naming.CONTROL_METRICS_NAMESPACE, metric_name=ETCD_DB_SIZE, statistic="Maximum",
                         period=cdk.Duration.minutes(5), dimensions_map={agent.DEPLOYMENT: env})
        alarm = self._metric_alarm(
            "EtcdNearQuota", "etcd-near-quota", size, threshold=ETCD_QUOTA_ALARM_SHARE * naming.ETCD_QUOTA_BYTES,
            comparison=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD, periods=1,
            missing=cw.TreatMissingData.NOT_BREACHING,
            description=f"etcd's database of {env} is at {ETCD_QUOTA_ALARM_SHARE:.0%} of its "
                        f"{naming.ETCD_QUOTA_BYTES // 1024**3} GiB quota; at the quota it refuses every write "
                        f"(registrations included). Run first: dictl status --env {env} --role control, then on a "
                        f"control host etcdctl endpoint status and etcdctl defrag (etcd's maintenance guide).")
        self._notify("etcd-near-quota", alarm)

    def _neuron_error_alarms(self) -> None:
        env, minutes = self.env_name, NEURON_ERRORS_PERIOD_MINUTES
        for fleet in self.fleets:
            alarm = self._metric_alarm(
                f"NeuronErrors{naming.pascal(fleet)}", f"neuron-errors-{fleet}",
                self.worker(agent.EXECUTION_ERRORS, "Sum", minutes=minutes, Fleet=fleet),
                threshold=NEURON_ERRORS_THRESHOLD, comparison=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                periods=1, missing=cw.TreatMissingData.NOT_BREACHING,
                description=f"The Neuron runtime on fleet {fleet} of {env} reported execution errors in the last "
                            f"{minutes} minutes (neuron-monitor's error counters: numerical, transient, model, "
                            f"runtime, hardware). Run first: dictl status --env {env} --fleet {fleet}, then "
                            f"dictl logs --env {env} --fleet {fleet} (the vLLM containers' Neuron runtime log).")
            self._notify(f"neuron-errors-{fleet}", alarm)

    def _pair_alarm(self) -> None:
        env, minutes = self.env_name, self.settings.no_pair_minutes
        first = f"Run first: dictl status --env {env}"
        children: list[cw.IAlarm] = []
        for role in self.roles:
            children.append(self._metric_alarm(
                f"NoHealthy{naming.pascal(role)}", f"no-healthy-{role}",
                self.proxy("HealthyWorkers", "Minimum", Role=role), threshold=1,
                comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD, periods=minutes,
                missing=cw.TreatMissingData.BREACHING,
                description=f"The proxy of {env} has had no healthy {role} worker for {minutes} minutes (missing "
                            f"data: none registered, or no metrics). {first}; then dictl logs --env {env}."))
        children.append(self._metric_alarm(
            "ProxyDown", "proxy-down", self.proxy(PROXY_UP, "Minimum"), threshold=1,
            comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD, periods=minutes,
            missing=cw.TreatMissingData.BREACHING,
            description=f"The proxy of {env} has not answered /metrics for {minutes} minutes. "
                        f"{first} --role control; then dictl logs --env {env} --role control."))
        for child in children:
            for dependency in self.pool_alarms_after:
                child.node.add_dependency(dependency)
        rule = cw.AlarmRule.all_of(
            cw.AlarmRule.any_of(*[cw.AlarmRule.from_alarm(a, cw.AlarmState.ALARM) for a in children]),
            cw.AlarmRule.not_(cw.AlarmRule.from_alarm(self._scaled_to_zero_alarm(), cw.AlarmState.ALARM)))
        what = "endpoint" if self.roles == STANDARD_POOL_ROLES else "prefill/decode pair"
        composite = cw.CompositeAlarm(
            self, "NoUsablePair", composite_alarm_name=self._name("no-usable-pair"), alarm_rule=rule,
            alarm_description=f"The proxy of {env} has had no usable {what} for {minutes} minutes: requests get "
                              f"503. {first}; the alarm's children say which role or the proxy itself.")
        self._notify("no-usable-pair", composite, recovery=True)

    def _scaled_to_zero_alarm(self) -> cw.Alarm:
        """In ALARM while some role has no instance desired: a schedule or `dictl scale` took it to zero on purpose
        (scale to zero at night), so no usable pair is expected and must not page. It notifies nobody itself.
        Group metrics are collected every minute (group_metrics_collection), 0 included."""
        per_role = {}
        for index, (role, groups) in enumerate(self.fleet_groups.items()):
            metrics = {f"g{index}x{n}": self.group(group, "GroupDesiredCapacity") for n, group in enumerate(groups)}
            per_role[f"r{index}"] = cw.MathExpression(
                expression=" + ".join(f"FILL({name}, 0)" for name in metrics) or "0", using_metrics=metrics,
                label=f"{role} instances desired", period=cdk.Duration.minutes(1))
        lowest = cw.MathExpression(expression=f"MIN([{', '.join(per_role)}])", using_metrics=per_role,
                                   label="instances desired, fewest of any role", period=cdk.Duration.minutes(1))
        return cw.Alarm(
            self, "ScaledToZero", alarm_name=self._name("scaled-to-zero"), metric=lowest, threshold=1,
            comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD, evaluation_periods=1,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description=f"Some role of {self.env_name} has no instance desired (a schedule or dictl scale set it "
                              "to zero); while this is in ALARM, no-usable-pair does not fire. It notifies nobody. Run first: "
                              f"dictl status --env {self.env_name} (each fleet's desired, in-service and warm size).")

    def _error_rate_alarm(self) -> None:
        env, minutes, percent = self.env_name, ERROR_RATE_PERIOD_MINUTES, self.settings.server_error_percent
        rate = cw.MathExpression(
            expression="IF(requests > 0, 100 * errors / requests, 0)", label="5xx %",
            period=cdk.Duration.minutes(minutes),
            using_metrics={"requests": self.proxy("Requests", "Sum", minutes=minutes),
                           "errors": self.proxy("ServerErrorResponses", "Sum", minutes=minutes)})
        alarm = self._metric_alarm(
            "ServerErrorRate", "server-errors", rate, threshold=percent,
            comparison=cw.ComparisonOperator.GREATER_THAN_THRESHOLD, periods=1,
            missing=cw.TreatMissingData.NOT_BREACHING,
            description=f"More than {percent:g}% of the answers of {env}'s proxy in {minutes} minutes were 5xx. "
                        f"Run first: dictl status --env {env}; the proxy's journal is in "
                        f"{naming.log_group(env, 'containers')} (stream control/INSTANCE/distack-proxy).")
        self._notify("server-errors", alarm)

    def _ttft_alarm(self) -> None:
        env, slo = self.env_name, self.settings.ttft_p99_slo_ms
        alarm = self._metric_alarm(
            "TtftP99", "ttft-p99", self.proxy("TimeToFirstToken", "p99", minutes=TTFT_PERIOD_MINUTES),
            threshold=slo, comparison=cw.ComparisonOperator.GREATER_THAN_THRESHOLD, periods=TTFT_PERIODS,
            missing=cw.TreatMissingData.NOT_BREACHING,
            description=f"The time to first token p99 of {env} has been above {slo:g} ms for "
                        f"{TTFT_PERIODS * TTFT_PERIOD_MINUTES} minutes. Run first: dictl status --env {env} "
                        f"(unhealthy or missing prefill endpoints), then compare with dictl bench --env {env}.")
        self._notify("ttft-p99", alarm)

    # Dashboard

    def _widgets(self, config: DeploymentConfig, groups: Mapping[str, str], node_log_group: logs.ILogGroup) -> None:
        env = self.env_name
        header = (f"# DiStack {env}\nengine {config.engine}, mode {config.mode}, proxy {config.proxy}. "
                  f"Alarms go to SNS topic distack-{env}-alarms. First look: `dictl status --env {env}`; "
                  f"live per endpoint: `dictl top --env {env}`.")
        if not self.proxy_metrics:
            header += ("\n\n**proxy: neuron** — neuron-proxy-server publishes no metrics, so " +
                       ", ".join(PROXY_ONLY_PANELS) + " and their alarms are absent. The vLLM, Neuron, fleet "
                       "and bootstrap panels below come from the nodes and still work.")
        board = self.dashboard
        board.add_widgets(cw.TextWidget(markdown=header, width=24, height=3))
        if self.proxy_metrics:
            board.add_widgets(
                cw.GraphWidget(title="Requests, 4xx, 5xx (per minute)", width=8, left=[
                    self.proxy("Requests", "Sum", label="requests"),
                    self.proxy("ClientErrorResponses", "Sum", label="4xx"),
                    self.proxy("ServerErrorResponses", "Sum", label="5xx")]),
                cw.GraphWidget(title="Time to first token (ms)", width=8, left=[
                    self.proxy("TimeToFirstToken", "p50", label="p50"),
                    self.proxy("TimeToFirstToken", "p99", label="p99")],
                    left_annotations=[cw.HorizontalAnnotation(value=self.settings.ttft_p99_slo_ms,
                                                              label="p99 SLO")]),
                cw.GraphWidget(title="Inter-token latency (ms)", width=8, left=[
                    self.proxy(INTER_TOKEN_LATENCY, "p50", label="p50"),
                    self.proxy(INTER_TOKEN_LATENCY, "p99", label="p99")]),
            )
        self._engine_widgets(config)
        if self.proxy_metrics:
            pool = []
            for role in self.roles:
                pool += [self.proxy("HealthyWorkers", "Minimum", label=f"{role} healthy", Role=role),
                         self.proxy("UnhealthyWorkers", "Maximum", label=f"{role} unhealthy", Role=role)]
            board.add_widgets(
                cw.GraphWidget(title="Proxy pool: workers per role (usable pairs need both roles healthy)",
                               width=10, left=pool, right=[self.proxy(PROXY_UP, "Minimum", label="proxy up")],
                               left_y_axis=cw.YAxisProps(min=0), right_y_axis=cw.YAxisProps(min=0, max=1)),
                cw.GraphWidget(title="In-flight requests (proxy)", width=6, left=[
                    self.proxy("InFlightRequests", "Maximum", label="max"),
                    self.proxy("InFlightRequests", "Average", label="average")]),
                cw.GraphWidget(title="Errors by kind, retries (per minute)", width=8, left=[
                    cw.MathExpression(
                        expression=f"SEARCH('{{{naming.PROXY_METRICS_NAMESPACE},{DEPLOYMENT_DIMENSION},Kind}} "
                                   f"MetricName=\"Errors\" {DEPLOYMENT_DIMENSION}=\"{env}\"', 'Sum', 60)",
                        label="", period=cdk.Duration.minutes(1)),
                    self.proxy("Retries", "Sum", label="retries")]),
            )
        sizes = []
        for name, group_name in groups.items():
            sizes += [self.group(group_name, "GroupDesiredCapacity", f"{name} desired"),
                      self.group(group_name, "GroupInServiceInstances", f"{name} in service")]
        board.add_widgets(
            cw.GraphWidget(title="Fleet sizes (Auto Scaling groups)", width=12, left=sizes,
                           left_y_axis=cw.YAxisProps(min=0)),
            cw.GraphWidget(title="Node bootstrap and metrics-agent failures", width=12,
                           left=[self.bootstrap_failures.with_(label="bootstrap failures"),
                                 self.metrics_agent_failures.with_(label="metrics agent failures")],
                           left_y_axis=cw.YAxisProps(min=0)),
        )
        etcd = [cw.Metric(namespace=naming.CONTROL_METRICS_NAMESPACE, metric_name=name, statistic=statistic,
                          period=cdk.Duration.minutes(1), label=label, dimensions_map={agent.DEPLOYMENT: env})
                for name, statistic, label in (("etcd_server_has_leader", "Minimum", "has leader"),
                                               ("etcd_server_leader_changes_seen_total", "Sum", "leader changes"))]
        lower = [cw.GraphWidget(title="etcd on the control host (registry)", width=8, left=etcd,
                                left_y_axis=cw.YAxisProps(min=0))]
        if self.proxy_metrics:
            lower.append(cw.GraphWidget(title="Request duration (ms)", width=8, left=[
                self.proxy("RequestDuration", "p50", label="p50"),
                self.proxy("RequestDuration", "p99", label="p99")]))
        board.add_widgets(*lower)
        board.add_widgets(
            cw.LogQueryWidget(title="Bootstrap and metrics-agent outcomes (nodes log group)", width=12, height=6,
                              log_group_names=[node_log_group.log_group_name],
                              query_lines=["fields @timestamp, @logStream, @message",
                                           "filter @message like /^(bootstrap (failed|complete)|metrics agent failed)/",
                                           "sort @timestamp desc", "limit 50"]),
            cw.AlarmStatusWidget(title="Alarms", width=12, height=6, alarms=list(self.alarms.values())),
        )

    def _engine_widgets(self, config: DeploymentConfig) -> None:
        """What the workers' agents collect: vLLM queues per role and KV cache per decoding endpoint, Neuron per
        fleet. A role's Sum is the total over its endpoints (one sample per endpoint and minute)."""
        roles = sorted({ep.role for fleet in config.fleets.values() for ep in fleet.resolved_endpoints})
        decoding = [r for r in roles if r in ("decode", "standard")]
        kv = agent.kv_cache_metric(config)
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Queued requests per role (vLLM waiting)", width=8, left_y_axis=cw.YAxisProps(min=0),
                           left=[self.worker(agent.WAITING, "Sum", label=r, Role=r) for r in roles]),
            cw.GraphWidget(title="In-flight requests per role (vLLM running)", width=8,
                           left_y_axis=cw.YAxisProps(min=0),
                           left=[self.worker(agent.RUNNING, "Sum", label=r, Role=r) for r in roles]),
            cw.GraphWidget(title="KV-cache usage per decode endpoint (1 = full)", width=8,
                           left_y_axis=cw.YAxisProps(min=0, max=1),
                           left=[self.per_endpoint(kv, "Maximum", r) for r in decoding]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="NeuronCore utilization per fleet (1 = busy)", width=8,
                           left_y_axis=cw.YAxisProps(min=0, max=1),
                           left=[self.worker(agent.NEURONCORE_UTILIZATION, "Average", label=f, Fleet=f)
                                 for f in self.fleets]),
            cw.GraphWidget(title="Device memory (HBM) used per fleet, largest runtime (bytes)", width=8,
                           left_y_axis=cw.YAxisProps(min=0),
                           left=[self.worker(agent.DEVICE_MEMORY, "Maximum", label=f, Fleet=f) for f in self.fleets]),
            cw.GraphWidget(title="Neuron runtime execution errors per fleet (per minute)", width=8,
                           left_y_axis=cw.YAxisProps(min=0),
                           left=[self.worker(agent.EXECUTION_ERRORS, "Sum", label=f, Fleet=f) for f in self.fleets]),
        )


# The panels that need the DiStack proxy's shipper (README text and the proxy: neuron header name them).
PROXY_ONLY_PANELS = ("requests/4xx/5xx", "time to first token", "inter-token latency", "the proxy pool",
                     "proxy in-flight", "errors by kind", "request duration")
