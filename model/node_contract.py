"""The node contract: every key the synth writes into a node's files, with its type and who reads it.

Two files, both rendered at synth (model/node_values.py) and installed by cloud-init: `/etc/di/node.env` on every node
(read by the node scripts in userdata/) and `/etc/di/proxy.env` on a control host that runs DiStack's proxy (read by
the proxy's and its shipper's settings parsers). An engine declares its own keys (model/engines/<name>.py
worker_keys, proxy_keys). Node-local knobs, which no file carries and only tests or an operator set, are declared
apart (LOCAL_KNOBS). tests/test_node_contract.py holds every declared key to being produced and read by its consumer.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

WORKER, CONTROL = "worker", "control"
NODE_ENV, PROXY_ENV = "node.env", "proxy.env"
# A CDK token: a deploy-time value (an address, a bucket name) that synth cannot type-check.
_TOKEN = re.compile(r"\$\{Token\[")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# What a value of each type looks like in the file.
TYPES: Mapping[str, Callable[[str], bool]] = {
    "text": lambda v: "\n" not in v,
    "int": lambda v: re.fullmatch(r"-?\d+", v) is not None,
    "number": _number,
    "flag": lambda v: v in ("0", "1"),
    "json": _json,
    "host:port": lambda v: re.fullmatch(r"[^\s:]+:\d+", v) is not None,
    "host:ports": lambda v: re.fullmatch(r"[^\s:,]+:\d+(,[^\s:,]+:\d+)*", v) is not None,
    "cidrs": lambda v: re.fullmatch(r"[^\s,]+/\d+(,[^\s,]+/\d+)*", v) is not None,
    "words": lambda v: "\n" not in v,
}


@dataclass(frozen=True)
class Key:
    """One key of a node file: its type, the files (repository paths) that read it, for which nodes it is written
    (worker, control), whether it may be empty or left out (written only where it applies), and what it means."""

    name: str
    type: str
    consumers: tuple[str, ...]
    doc: str
    nodes: tuple[str, ...] = (WORKER, CONTROL)
    optional: bool = False
    always: bool = True

    @property
    def file(self) -> str:
        """node.env for DI_* keys, proxy.env for the proxy's DIPROXY_* options."""
        return PROXY_ENV if self.name.startswith("DIPROXY_") else NODE_ENV

    def accepts(self, value: str) -> bool:
        """Whether the rendered value has the key's type (deploy-time tokens pass: synth cannot know them)."""
        if _TOKEN.search(value) or (value == "" and self.optional):
            return True
        return value != "" and TYPES[self.type](value)


def key(name: str, type_: str, consumers: str, doc: str, *, nodes: tuple[str, ...] = (WORKER, CONTROL),
        optional: bool = False, always: bool = True) -> Key:
    """A Key with its consumers as one space-separated string (the declarations below stay one line each)."""
    return Key(name, type_, tuple(consumers.split()), doc, nodes, optional, always)


W, C = (WORKER,), (CONTROL,)
U = "userdata/"

# Every node's node.env (model/node_values.py common_values).
COMMON: tuple[Key, ...] = (
    key("DI_DEPLOYMENT", "text", U + "di-bootstrap " + U + "metrics-agent.sh", "the environment's name"),
    key("DI_STACK", "text", U + "boot.sh " + U + "lib/report.sh", "the CloudFormation stack the node signals"),
    key("DI_REGION", "text", U + "boot.sh " + U + "lib/s3.sh", "the AWS Region"),
    key("DI_MODE", "text", U + "worker.sh " + U + "di-status", "disaggregated or standard"),
    key("DI_ENGINE", "text", U + "lib/modules.sh " + U + "di-register", "the KV-transfer engine (userdata/engines/)"),
    key("DI_PROXY", "text", U + "control.sh", "the proxy kind (model/proxies.py)"),
    key("DI_IMAGE", "text", U + "di-run " + U + "worker.sh", "the worker container image"),
    key("DI_MODEL_ID", "text", U + "worker.sh " + U + "ops/smoke.sh", "the served model's Hugging Face id"),
    key("DI_MODEL_SOURCE", "text", U + "worker.sh", "huggingface or s3"),
    key("DI_HF_TOKEN_SECRET", "text", U + "worker.sh", "Secrets Manager name of the HF token", nodes=W, optional=True),
    key("DI_MAX_MODEL_LEN", "int", U + "engines/nixl.sh " + U + "lib/compile.sh", "vLLM --max-model-len"),
    key("DI_MAX_NUM_SEQS", "int", U + "engines/nixl.sh " + U + "lib/compile.sh", "vLLM --max-num-seqs"),
    key("DI_BUCKET", "text", U + "worker.sh " + U + "ops/bench.sh", "the artifacts bucket"),
    key("DI_LOG_GROUP_NODES", "text", U + "lib/report.sh", "the node log group"),
    key("DI_LOG_GROUP_CONTAINERS", "text", U + "lib/containers.sh", "the container log group"),
    key("DI_ETCD", "host:port", U + "lib/etcd.sh " + U + "di-register", "the registry's client address"),
    key("DI_PROXY_PORT", "int", U + "di-ready " + U + "ops/smoke.sh", "the proxy's port"),
    key("DI_ETCD_TLS", "flag", U + "lib/etcd.sh", "1: etcd speaks HTTPS with client certificates and auth"),
    key("DI_ETCD_CLIENT_SECRET", "text", U + "lib/etcd_trust.sh",
        "the secret holding the registrar's etcd certificate and password (DI_ETCD_TLS=1)", optional=True),
    key("DI_SCRIPTS_URL", "text", U + "boot.sh", "s3:// URL of the node scripts bundle (empty outside a stack)",
        optional=True),
    key("DI_ROLE", "text", U + "di-bootstrap " + U + "di-status", "prefill, decode, colocated, standard or control"),
    key("DI_FLEET", "text", U + "lib/report.sh " + U + "metrics-agent.sh", "the fleet's name (control: control)"),
    key("DI_SIGNAL_RESOURCE", "text", U + "boot.sh " + U + "lib/report.sh",
        "logical ID of the Auto Scaling group awaiting the boot signal", optional=True),
)

# A worker's node.env (model/node_values.py worker_values), besides its engine's keys.
WORKER_ONLY: tuple[Key, ...] = (
    key("DI_TENSOR_PARALLEL", "int", U + "engines/nixl.sh " + U + "lib/compile.sh", "TP degree", nodes=W),
    key("DI_ACCELERATOR", "text", U + "lib/modules.sh", "neuron or gpu", nodes=W),
    key("DI_LNC", "int", U + "engines/nixl.sh", "logical NeuronCore config (empty on GPUs)", nodes=W, optional=True),
    key("DI_LNC_APPLIES", "flag", U + "accelerators/neuron.sh", "1 where the type has the LNC setting", nodes=W),
    key("DI_ENDPOINTS", "words", U + "lib/node.sh " + U + "di-run", "role:cores:port per endpoint", nodes=W),
    key("DI_EXPECTED_NEURON_DEVICES", "int", U + "accelerators/neuron.sh", "Neuron devices the type has", nodes=W,
        optional=True),
    key("DI_EXPECTED_GPUS", "int", U + "accelerators/gpu.sh", "GPUs the type has", nodes=W, optional=True),
    key("DI_EXPECTED_EFA_INTERFACES", "int", U + "worker.sh", "EFA interfaces the type has", nodes=W),
    key("DI_NIXL_BACKEND", "text", U + "engines/nixl.sh " + U + "engines/lmcache.sh", "NIXL's backend on the type",
        nodes=W),
    key("DI_S3_TARGET_BANDWIDTH", "text", U + "lib/s3.sh", "the CRT S3 client's target bandwidth", nodes=W,
        optional=True),
    key("DI_PYTHONHASHSEED", "text", U + "engines/nixl.sh " + U + "engines/lmcache.sh",
        "PYTHONHASHSEED every node sets (engine lmcache)", nodes=W, optional=True),
    key("DI_MIN_DATA_GB", "int", U + "worker.sh", "local NVMe the worker needs", nodes=W),
    key("DI_LAUNCH_HOOK", "text", U + "di-bootstrap " + U + "di-lifecycle", "the launch lifecycle hook"),
    key("DI_TERMINATION_HOOK", "text", U + "di-lifecycle", "the termination lifecycle hook", nodes=W),
    key("DI_DRAIN_TIMEOUT_SECONDS", "int", U + "di-lifecycle " + U + "ops/drain.sh", "longest drain", nodes=W),
)

# The control host's node.env (model/node_values.py control_values).
CONTROL_ONLY: tuple[Key, ...] = (
    # Empty with several control hosts: each claims a slot of DI_CONTROL_SLOTS at boot (userdata/lib/members.sh).
    key("DI_CONTROL_ADDRESS", "text", U + "control.sh " + U + "di-status", "the fixed address", nodes=C,
        optional=True),
    key("DI_CONTROL_ENI", "text", U + "control.sh", "the interface taken over at boot", nodes=C, optional=True),
    key("DI_ETCD_VOLUME", "text", U + "control.sh", "the retained etcd volume", nodes=C, optional=True),
    key("DI_CONTROL_SLOTS", "words", U + "lib/members.sh", "every member's interface,volume,address (several hosts)",
        nodes=C, always=False),
    key("DI_ETCD_IMAGE", "text", U + "control.sh " + U + "di-run",
        "etcd's pinned image, through the deployment's ECR pull-through cache", nodes=C),
    key("DI_ETCD_UPSTREAM_IMAGE", "text", U + "control.sh",
        "the upstream image DI_ETCD_IMAGE caches (named when its pull fails)", nodes=C),
    key("DI_ETCD_PEER_PORT", "int", U + "di-run", "etcd's peer port", nodes=C),
    key("DI_ETCD_CA_SECRET", "text", U + "lib/etcd_trust.sh",
        "the secret holding the etcd CAs (DI_ETCD_TLS=1 or DI_ETCD_PEER_TLS=1)", nodes=C, optional=True),
    key("DI_ETCD_PEER_TLS", "flag", U + "lib/etcd.sh",
        "1: the etcd members replicate over TLS with peer certificates (several control hosts)", nodes=C),
    key("DI_ETCD_SERVER_NAME", "text", U + "lib/etcd_trust.sh",
        "the name workers dial etcd by, which the member certificates carry", nodes=C),
    key("DI_PROXY_UNITS", "words", U + "control.sh " + U + "di-status " + U + "di-restart",
        "the proxy's systemd units, the serving one first", nodes=C),
    key("DI_PROXY_PACKAGE_URL", "text", U + "control.sh", "s3:// URL of the proxy package (proxy: distack)",
        nodes=C, optional=True),
    key("DI_PROXY_WHEELHOUSE_URL", "text", U + "control.sh",
        "s3:// URL of the proxy's wheels, installed without an index (proxy: distack)", nodes=C, optional=True),
    key("DI_UPSTREAM_IMAGE", "text", U + "control.sh",
        "the upstream image DI_IMAGE caches where the control host pulls it through ECR (proxy: neuron)", nodes=C,
        optional=True),
    key("DI_PROXY_API_KEY_SECRET", "text", U + "ops/smoke.sh " + U + "ops/bench.sh",
        "Secrets Manager name of the clients' API key", nodes=C, optional=True),
)

# The control host's proxy.env (model/node_values.py proxy_values), besides the engine's options: DiStack's proxy
# reads DIPROXY_<FLAG> (diproxy/config.py), its shipper DIPROXY_CLOUDWATCH_<FLAG> (diproxy/shipper/settings.py).
PROXY = "diproxy/config.py"
SHIPPER = "diproxy/shipper/settings.py"
PROXY_ONLY: tuple[Key, ...] = (
    key("DIPROXY_MODE", "text", PROXY, "di (prefill/decode pairs) or standard", nodes=C),
    key("DIPROXY_ENGINE", "text", PROXY, "the protocol spoken to the workers", nodes=C),
    key("DIPROXY_ETCD", "host:ports", PROXY, "the registry's members: this host's own first, then every member",
        nodes=C),
    key("DIPROXY_PORT", "int", f"{PROXY} {SHIPPER}", "the proxy's port (the shipper scrapes its /metrics)", nodes=C),
    key("DIPROXY_AWS_REGION", "text", f"{PROXY} {SHIPPER}", "Region of the API key secret and the metrics", nodes=C),
    key("DIPROXY_API_KEY_SECRET", "text", PROXY, "Secrets Manager name of the clients' API key", nodes=C,
        optional=True),
    key("DIPROXY_MAX_MODEL_LEN", "int", PROXY, "the model's context: bounds max_tokens, prompts and bodies", nodes=C),
    key("DIPROXY_MAX_N", "int", PROXY, "largest n and best_of (1 in disaggregated mode)", nodes=C),
    key("DIPROXY_MAX_IN_FLIGHT", "int", PROXY, "requests in flight at once (control_plane.max_in_flight)", nodes=C),
    key("DIPROXY_MAX_IN_FLIGHT_PER_CLIENT", "int", PROXY, "the same per client address", nodes=C),
    key("DIPROXY_WORKER_NETWORKS", "cidrs", PROXY, "the networks registered workers must be in", nodes=C),
    key("DIPROXY_MAX_WORKERS", "int", PROXY, "registered workers taken at most", nodes=C),
    # Cache-aware routing (model/routing_config.py proxy_env, diproxy/prefix_routing.py).
    key("DIPROXY_ROUTING", "text", PROXY, "blind, approximate or precise", nodes=C),
    key("DIPROXY_ROUTING_EPSILON", "number", PROXY, "bounded load's epsilon", nodes=C),
    key("DIPROXY_ROUTING_LOAD_WEIGHT", "number", PROXY, "blocks one request in flight is worth", nodes=C),
    key("DIPROXY_ROUTING_BLOCK_BYTES", "int", PROXY, "approximate mode's prompt bytes per block", nodes=C),
    key("DIPROXY_ROUTING_CAPACITY", "int", PROXY, "blocks remembered per worker", nodes=C),
    key("DIPROXY_PD_MAX_UNCACHED_TOKENS", "int", PROXY, "PD decider's token bound (0: off)", nodes=C),
    key("DIPROXY_PD_MAX_UNCACHED_RATIO", "number", PROXY, "PD decider's share-of-prompt bound", nodes=C),
    key("DIPROXY_MIGRATION_LIMIT", "int", PROXY, "stream migrations per request (0: never)", nodes=C),
    key("DIPROXY_ETCD_CA_FILE", "text", PROXY, "the etcd CA (systemd credential)", nodes=C, always=False),
    key("DIPROXY_ETCD_CERT_FILE", "text", PROXY, "the host's etcd client certificate", nodes=C, always=False),
    key("DIPROXY_ETCD_KEY_FILE", "text", PROXY, "its key", nodes=C, always=False),
    key("DIPROXY_ETCD_USER", "text", PROXY, "the proxy's etcd user (may read /workers/ only)", nodes=C,
        always=False),
    key("DIPROXY_ETCD_PASSWORD_FILE", "text", PROXY, "its password (systemd credential)", nodes=C, always=False),
    key("DIPROXY_CLOUDWATCH_DEPLOYMENT", "text", SHIPPER, "the metrics' Deployment dimension", nodes=C),
    key("DIPROXY_CLOUDWATCH_NAMESPACE", "text", SHIPPER, "the namespace the control role may write to", nodes=C),
)


@dataclass(frozen=True)
class Knob:
    """A node-local knob: read by the node scripts with a default, set only by tests or an operator on the node,
    never written by the synth."""

    name: str
    consumer: str
    doc: str


def knob(name: str, consumer: str, doc: str) -> Knob:
    return Knob(name, U + consumer, doc)


LOCAL_KNOBS: tuple[Knob, ...] = (
    knob("DI_NODE_ENV", "lib/node.sh", "where node.env is"),
    knob("DI_OVERRIDE_ENV", "lib/node.sh", "the update runbook's overrides, read after node.env"),
    knob("DI_PROXY_ENV", "control.sh", "where proxy.env is"),
    knob("DI_HOME", "lib/node.sh", "where the node scripts are installed"),
    knob("DI_SCRIPTS_DIR", "lib/node.sh", "the scripts' directory, from the sourcing file"),
    knob("DI_LIB_DIR", "worker.sh", "the shared functions' directory, from the running script"),
    knob("DI_SYSTEMD_DIR", "lib/node.sh", "where units are installed"),
    knob("DI_RUN_DIR", "lib/node.sh", "runtime state, gone after a stop"),
    knob("DI_STATE_DIR", "lib/node.sh", "state that survives a stop"),
    knob("DI_DATA_DIR", "lib/node.sh", "the model and compiled-artifact volume"),
    knob("DI_MEMBER_ENV", "lib/members.sh", "the etcd member slot this control host claimed"),
    knob("DI_ETCD_QUOTA_BYTES", "di-run", "etcd's backend quota (naming.ETCD_QUOTA_BYTES; the alarm's bound)"),
    knob("DI_ETCD_METRICS_PORT", "di-run", "etcd's loopback metrics listener (naming.ETCD_METRICS_PORT)"),
    knob("DI_ETCD_MEMBER", "lib/members.sh", "that member's name, set when the slot is claimed"),
    knob("DI_ETCDCTL", "lib/members.sh", "a local etcdctl instead of the pinned image's"),
    knob("DI_ETCD_DIR", "lib/etcd.sh", "this node's etcd CA, certificate and credentials"),
    knob("DI_DATA_ON_ROOT", "worker.sh", "1: keep data on the root volume"),
    knob("DI_DEV_ROOT", "lib/node.sh", "where device nodes are"),
    knob("DI_KV_LOCK", "lib/node.sh", "NeuronConnector's stale lock file"),
    knob("DI_FSTAB", "lib/node.sh", "the fstab mounts are recorded in"),
    knob("DI_BOOT_TMP", "boot.sh", "where the scripts bundle is unpacked"),
    knob("DI_IMDS_URL", "lib/imds.sh", "instance metadata's address"),
    knob("DI_INSTANCE_ID", "lib/imds.sh", "this instance's ID instead of asking IMDS"),
    knob("DI_LOCAL_IP", "lib/imds.sh", "this instance's private IP instead of asking IMDS"),
    knob("DI_LOG_TAG", "lib/log.sh", "the tag log lines carry"),
    knob("DI_S3_CONFIG", "lib/s3.sh", "the AWS CLI configuration for S3 transfers"),
    knob("DI_NVME_GLOB", "worker.sh", "the instance-store NVMe devices"),
    knob("DI_RAID_DEVICE", "worker.sh", "the RAID device made of them"),
    knob("DI_SETTLE_SECONDS", "worker.sh", "pause before the readiness checks"),
    knob("DI_SHM_SIZE", "di-run", "the containers' /dev/shm"),
    knob("DI_STOP_TIMEOUT", "di-run", "seconds docker stop waits"),
    knob("DI_ETCD_MOUNT", "control.sh", "where the etcd volume is mounted"),
    knob("DI_ETCD_DEVICE_NAME", "control.sh", "the etcd volume's device name at attach"),
    knob("DI_DISK_BY_ID", "control.sh", "where NVMe by-id links are"),
    knob("DI_PROXY_SRC", "control.sh", "where the proxy package is unpacked"),
    knob("DI_PROXY_INSTALLER", "control.sh", "the proxy package's installer"),
    knob("DI_PROXY_PYTHON", "control.sh", "the Python the proxy runs on"),
    knob("DI_METRICS_DIR", "metrics-agent.sh", "the metrics agent's generated files"),
    knob("DI_CWAGENT_HOME", "metrics-agent.sh", "where the CloudWatch agent is"),
    knob("DI_CWAGENT_VERSION", "metrics-agent.sh", "the pinned CloudWatch agent release"),
    knob("DI_CWAGENT_FINGERPRINT", "metrics-agent.sh", "its signing key's fingerprint"),
    knob("DI_CWAGENT_BASE_URL", "metrics-agent.sh", "where it is downloaded from"),
    knob("DI_NEURON_BIN", "accelerators/neuron.sh", "the Neuron tools' directory"),
    knob("DI_NEURON_MONITOR_PORT", "accelerators/neuron.sh", "the neuron-monitor exporter's port"),
    knob("DI_DCGM_EXPORTER_IMAGE", "accelerators/gpu.sh", "NVIDIA's DCGM exporter image"),
    knob("DI_DCGM_EXPORTER_PORT", "accelerators/gpu.sh", "its port"),
)


def declared(node: str, file: str, engine_keys: Iterable[Key]) -> dict[str, Key]:
    """The keys one node's file carries: the shared declarations plus the engine's, by name."""
    shared = (*COMMON, *WORKER_ONLY, *CONTROL_ONLY, *PROXY_ONLY)
    return {k.name: k for k in (*shared, *engine_keys) if node in k.nodes and k.file == file}


def problems(node: str, file: str, values: Mapping[str, str], engine_keys: Iterable[Key]) -> list[str]:
    """What is wrong with one rendered file: keys produced but not declared, declared but not produced, or of the
    wrong type."""
    keys = declared(node, file, engine_keys)
    found = [f"{name} is not declared in model/node_contract.py (nor by the engine)" for name in sorted(values)
             if name not in keys]
    found += [f"{name} is declared for the {node}'s {file} but not produced" for name, k in sorted(keys.items())
              if k.always and name not in values]
    found += [f"{name}={values[name]!r} is not of type {k.type}" for name, k in sorted(keys.items())
              if name in values and not k.accepts(str(values[name]))]
    return found


def checked(node: str, file: str, values: Mapping[str, str], engine_keys: Iterable[Key]) -> dict[str, str]:
    """The values, once they match the contract; a ValueError naming every mismatch otherwise (a developer's error:
    the synth never writes a file its readers were not declared for)."""
    found = problems(node, file, values, engine_keys)
    if found:
        raise ValueError(f"the {node}'s {file} breaks the node contract: " + "; ".join(found))
    return dict(values)


def env_file(values: Mapping[str, str]) -> str:
    """The file as nodes receive it: `KEY='value'` lines, sorted, shell-quoted (bash sources it, systemd's
    EnvironmentFile reads it; CDK tokens stay intact and resolve at deploy)."""
    return "".join(f"{name}={shlex.quote(str(value))}\n" for name, value in sorted(values.items()))
