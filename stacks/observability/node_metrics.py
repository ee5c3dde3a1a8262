"""Where the nodes' CloudWatch agents get their configuration and send their metrics: one SSM parameter pair per
node kind (model/observability/agent_config.py) and the deployment's `metrics` log group for the EMF records."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_logs as logs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from model import naming
from model.config import DeploymentConfig
from model.observability import agent_config


class NodeMetrics(Construct):
    """Exposes ``log_group`` and ``parameters`` (node kind, i.e. fleet name or `control` -> its two parameters)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: DeploymentConfig,
                 retention: logs.RetentionDays) -> None:
        super().__init__(scope, construct_id)
        # The agent's EMF records: CloudWatch extracts the metrics from them; the records themselves are kept as long
        # as the deployment's other logs.
        self.log_group = logs.LogGroup(self, "LogGroup",
                                       log_group_name=naming.log_group(config.name, naming.METRICS_LOG_KIND),
                                       retention=retention, removal_policy=cdk.RemovalPolicy.DESTROY)
        self.parameters: dict[str, list[ssm.IStringParameter]] = {}
        for kind, files in agent_config.node_kinds(config).items():
            pair = []
            for part, text in (("agent", files.agent_text), ("scrape", files.scrape)):
                if len(text.encode()) > agent_config.PARAMETER_LIMIT_BYTES:
                    raise ValueError(f"the {part} configuration of {kind} is {len(text.encode())} bytes, over the "
                                     f"{agent_config.PARAMETER_LIMIT_BYTES} a standard SSM parameter holds")
                pair.append(ssm.StringParameter(
                    self, f"{naming.pascal(kind)}{part.title()}", parameter_name=naming.metrics_agent_parameter(
                        config.name, kind, part), string_value=text, tier=ssm.ParameterTier.STANDARD,
                    description=f"DiStack {config.name}: CloudWatch agent {part} configuration of {kind} nodes"))
            self.parameters[kind] = pair

    def worker_parameters(self) -> list[ssm.IStringParameter]:
        return [p for kind, pair in self.parameters.items() if kind != naming.ROLE_CONTROL for p in pair]

    def control_parameters(self) -> list[ssm.IStringParameter]:
        return self.parameters[naming.ROLE_CONTROL]
