"""Names, tag keys, ports and paths: the contract between the stack, the nodes and `dictl`.

Imported by `ops/`, so it must never import aws_cdk (that costs seconds and needs Node.js).
"""

from __future__ import annotations

TAG_DEPLOYMENT = "di:deployment"
TAG_ROLE = "di:role"
TAG_FLEET = "di:fleet"

ROLE_PREFILL = "prefill"
ROLE_DECODE = "decode"
ROLE_COLOCATED = "colocated"
ROLE_STANDARD = "standard"
ROLE_CONTROL = "control"
WORKER_ROLES = (ROLE_PREFILL, ROLE_DECODE, ROLE_COLOCATED, ROLE_STANDARD)

PROXY_PORT = 8000
ETCD_CLIENT_PORT = 8989
# etcd's /metrics and /health on a plain-HTTP loopback listener of their own (--listen-metrics-urls), for the local
# CloudWatch agent: the client port requires a client certificate once etcd is secured.
ETCD_METRICS_PORT = 8990
# etcd's backend quota (its default, 2 GiB, set explicitly so the alarm's bound and etcd's agree): at the quota etcd
# raises NOSPACE and refuses every write (https://etcd.io/docs/v3.5/op-guide/maintenance/#space-quota).
ETCD_QUOTA_BYTES = 2 * 1024**3
# etcd's peer listener stays on loopback (single member), as in the Neuron DI tutorial.
ETCD_PEER_PORT = 21323
VLLM_BASE_PORT = 8000
# NeuronConnector's ZMQ signal plane and the Neuron runtime's send/recv bootstrap: worker-to-worker only.
KV_SIGNAL_PORT = 14579
KV_BOOTSTRAP_PORT = 45645
RESERVED_WORKER_PORTS = {ETCD_CLIENT_PORT: "etcd", KV_SIGNAL_PORT: "KV signal", KV_BOOTSTRAP_PORT: "KV bootstrap"}

# CloudWatch namespace of the DiStack proxy's metrics; the control role may write to this one only. The synth hands
# it to the proxy's shipper (DIPROXY_CLOUDWATCH_NAMESPACE in proxy.env); the shipper's own default,
# diproxy/shipper/settings.py DEFAULT_NAMESPACE, is the same value (tests/ops/test_layering.py checks it).
PROXY_METRICS_NAMESPACE = "DiStack/Proxy"
# Per-role load signals the proxy publishes in that namespace (dimensions Deployment and Role), which each fleet's
# target-tracking policy follows: requests waiting for or in prefill per healthy prefill endpoint, and streams in
# flight per healthy decode endpoint (compared with max_num_seqs by the config rules).
PROXY_METRIC_PREFILL_LOAD = "PrefillRequestsPerEndpoint"
PROXY_METRIC_DECODE_LOAD = "DecodeStreamsPerEndpoint"
METRIC_DIMENSION_DEPLOYMENT = "Deployment"
METRIC_DIMENSION_ROLE = "Role"

# Auto Scaling lifecycle hooks every worker group has; the node completes them itself (userdata/di-lifecycle).
LAUNCH_HOOK = "di-launch"
TERMINATION_HOOK = "di-termination"

NODE_ENV_PATH = "/etc/di/node.env"
# DiStack's proxy settings on a control host (diproxy/deploy/distack-proxy.service EnvironmentFile).
PROXY_ENV_PATH = "/etc/di/proxy.env"
NODE_SCRIPTS_DIR = "/opt/di"
KV_LOCK_FILE = "/tmp/nrt_kv_store_server.lock"

BUCKET_PREFIX_COMPILED = "compiled/"
# Where a node uploads what it compiled (USERID/KEY/): nodes may not write compiled/, `dictl compile` promotes.
BUCKET_PREFIX_STAGING_COMPILED = "staging/compiled/"
BUCKET_PREFIX_MODELS = "models/"
BUCKET_PREFIX_BENCH = "bench/"
BUCKET_PREFIX_LOGS = "logs/"
# Every prefix a node writes is followed by the writer's IAM user ID, ROLE-ID:INSTANCE-ID (model/write_scope.py), the
# only part of the key its role lets it write: PREFIX/ROLE-ID:INSTANCE-ID/...
NODE_WRITE_PREFIXES = (BUCKET_PREFIX_STAGING_COMPILED, BUCKET_PREFIX_BENCH, BUCKET_PREFIX_LOGS)


def stack_name(env: str) -> str:
    """CloudFormation stack name of one deployment."""
    return f"di-{env}"


def ssm_document(env: str, verb: str) -> str:
    """SSM Command document name, e.g. di-prod-Restart."""
    return f"di-{env}-{verb[:1].upper()}{verb[1:]}"


def log_group(env: str, stream: str) -> str:
    """CloudWatch log group for one kind of output ("nodes", "containers", "ssm")."""
    return f"/distack/{env}/{stream}"


# Stack output keys that `dictl` reads: stable, never renamed.
OUTPUT_PROXY_URL = "ProxyUrl"
OUTPUT_ETCD_ADDRESS = "EtcdAddress"
OUTPUT_BUCKET = "ArtifactsBucketName"
OUTPUT_NODE_LOG_GROUP = "NodeLogGroup"
OUTPUT_CONTAINER_LOG_GROUP = "ContainerLogGroup"
OUTPUT_SSM_LOG_GROUP = "CommandLogGroup"
OUTPUT_CONTROL_INSTANCE_GROUP = "ControlAutoScalingGroup"
OUTPUT_DASHBOARD_URL = "DashboardUrl"
OUTPUT_ALARM_TOPIC = "AlarmTopicArn"
# Comma-separated IDs (AROA...) of the node roles: the ROLE-ID of the ROLE-ID:INSTANCE-ID folder a node writes.
OUTPUT_NODE_ROLE_IDS = "NodeRoleIds"


def fleet_output(fleet: str) -> str:
    """Output key holding the Auto Scaling group name of one fleet."""
    return f"Fleet{pascal(fleet)}AutoScalingGroup"


def pascal(text: str) -> str:
    """`prefill-a` -> `PrefillA`: construct ids and output keys from config names."""
    return "".join(part[:1].upper() + part[1:] for part in text.replace("_", "-").split("-") if part)


# The CloudWatch agent on every node (model/observability/agent_config.py generates its configuration at synth,
# userdata/metrics-agent.sh starts it). It sends Embedded Metric Format records to the `metrics` log group; CloudWatch
# extracts the metrics into these namespaces (dimensions Deployment, Fleet, Role, InstanceId and, per endpoint, Port).
WORKER_METRICS_NAMESPACE = "DiStack/Workers"
CONTROL_METRICS_NAMESPACE = "DiStack/Control"
METRICS_LOG_KIND = "metrics"
# neuron-monitor's Prometheus exporter on each worker; its own default, 8000, is the first vLLM endpoint's port
# (aws-neuron-sdk tools/neuron-sys-tools/neuron-monitor-user-guide.rst: "The default value for --port is 8000").
NEURON_MONITOR_PORT = 9010
RESERVED_WORKER_PORTS[NEURON_MONITOR_PORT] = "neuron-monitor exporter"


def metrics_agent_parameter(env: str, fleet: str, part: str) -> str:
    """SSM parameter holding one node kind's agent configuration: part `agent` (the agent's JSON, read with
    `-c ssm:NAME`) or `scrape` (the Prometheus scrape configuration the JSON points at)."""
    return f"/distack/{env}/metrics-agent/{fleet}/{part}"
