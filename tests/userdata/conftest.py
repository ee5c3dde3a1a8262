"""Run node scripts unprivileged: node.env from the real renderer, fakes on PATH, every path in a temp dir."""

from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from model import node_values, proxies
from stacks import userdata
from model.loader import load_environment

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "userdata"
FAKES = Path(__file__).resolve().parent / "fakes"
FAKE_COMMANDS = sorted(p.name for p in FAKES.iterdir() if not p.name.startswith("_"))
INSTANCE_ID = "i-0123456789abcdef0"

# What the stack hands the renderer at deploy time, with realistic shapes.
REFS = node_values.DeploymentRefs(
    stack_name="di-test", control_address="10.42.0.10", bucket_name="di-test-artifactsbucket-abc123",
    node_log_group="/distack/test/nodes", container_log_group="/distack/test/containers",
    scripts_url="s3://cdk-hnb659fds-assets-123456789012-us-east-2/0123abcd.zip",
    proxy_wheelhouse_url="s3://cdk-hnb659fds-assets-123456789012-us-east-2/4567cdef.zip",
    ecr_registry="123456789012.dkr.ecr.us-east-2.amazonaws.com",
    etcd_ca_secret="arn:aws:secretsmanager:us-east-2:123456789012:secret:EtcdTrustCa-abc123",
    etcd_client_secret="arn:aws:secretsmanager:us-east-2:123456789012:secret:EtcdTrustRegistrar-def456")


def rendered_values(env: str, fleet: str | None) -> dict[str, str]:
    """node.env values for one node of a shipped config, exactly as the renderer produces them."""
    return dict(_rendered_values(env, fleet))


@functools.cache
def _rendered_values(env: str, fleet: str | None) -> dict[str, str]:
    config = load_environment(env)
    if fleet is None:
        return node_values.control_values(config, REFS, network_interface_id="eni-0aaaabbbbccccdddd",
                                          etcd_volume_id="vol-0123456789abcdef0", signal_resource="ControlHostGroup")
    return node_values.worker_values(config, fleet, REFS, signal_resource=f"{fleet.title()}FleetGroup")


def proxy_env_text(env: str) -> str | None:
    """The control host's proxy.env as user data installs it (None when the config runs another proxy)."""
    values = node_values.proxy_values(load_environment(env), rendered_values(env, None))
    if values is None:
        return None
    document = yaml.safe_load(userdata.render(rendered_values(env, None), values))
    return next(f["content"] for f in document["write_files"] if f["path"] == "/etc/di/proxy.env")


@functools.cache  # rendered once per node of a config and session: many tests boot the same node
def node_env_text(env: str, fleet: str | None) -> str:
    """The node.env file as the node receives it: taken back out of the rendered cloud-config."""
    document = yaml.safe_load(userdata.render(rendered_values(env, fleet)))
    return next(f["content"] for f in document["write_files"] if f["path"] == "/etc/di/node.env")


@dataclass
class Node:
    """One simulated node: a temp root, the fakes (or some of them) first on PATH, a call log."""

    root: Path
    values: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return self.root / "fake-state"

    def set(self, name: str, value: str = "1") -> None:
        """Switch a fake behaviour on (see tests/userdata/fakes/_fake)."""
        (self.state / name).write_text(value)

    def override(self, **values: str) -> None:
        """Values the update runbook's override.env would carry (read after node.env); `values` follows them."""
        with open(self.env["DI_OVERRIDE_ENV"], "a", encoding="utf-8") as out:
            out.writelines(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
        self.values.update(values)

    def run(self, script: str, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", str(SCRIPTS / script), *args], env={**self.env, **extra},
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{script} {args} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def calls(self, cmd: str | None = None) -> list[list[str]]:
        log = self.state / "calls.jsonl"
        if not log.exists():
            return []
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        return [e["argv"] if cmd else [e["cmd"], *e["argv"]] for e in entries if cmd in (None, e["cmd"])]

    def docker_runs(self) -> list[list[str]]:
        return [argv for argv in self.calls("docker") if argv[:1] == ["run"]]

    def signals(self) -> list[list[str]]:
        return [argv for argv in self.calls("aws") if argv[:2] == ["cloudformation", "signal-resource"]]


# What the renderer writes for a control host with proxy: distack (model/proxies.py), for a legacy config switched to it.
DISTACK_PROXY = {"DI_PROXY": proxies.DISTACK.name, "DI_PROXY_UNITS": " ".join(proxies.DISTACK.units)}

SEED_IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04"

# What a nixl worker's node.env carries beyond the common values (engine-contract.md), as the DI tutorial's
# Llama-style settings; used where a test needs a nixl worker whatever engine the shipped configs pick.
NIXL_VALUES = {
    "DI_ENGINE": "nixl",
    "DI_IMAGE": "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04",
    "DI_KV_CONNECTOR": "NixlConnector", "DI_NIXL_SIDE_CHANNEL_BASE_PORT": "5559", "DI_MAX_NUM_BATCHED_TOKENS": "8192",
    "DI_BLOCK_SIZE": "", "DI_OPTIMIZATION_LEVEL": "", "DI_NEURON_CONFIG": "", "DI_COMPILE_TIMEOUT_SECONDS": "2400",
    "DI_READY_TIMEOUT_SECONDS": "1800", "DI_EXECUTE_MODEL_TIMEOUT_SECONDS": "1200",
}


def shipped_envs() -> list[str]:
    return sorted(p.stem for p in (ROOT / "config").glob("*.yaml"))


def find_fleet(*, engine: str | None = None, role: str, instance: str = "") -> tuple[str, str] | None:
    """(env, fleet) of the first shipped config with a fleet of ROLE (on an instance type starting with INSTANCE)
    whose engine is ENGINE (any engine when None)."""
    for env in shipped_envs():
        config = load_environment(env)
        if engine is not None and config.engine != engine:
            continue
        for name, fleet in config.fleets.items():
            if fleet.role == role and fleet.instance_type.startswith(instance):
                return env, name
    return None


def engine_node(make, engine: str, role: str, *, instance: str = "", **kw) -> "Node":
    """A worker of ROLE running ENGINE: a shipped config's when one exists, else another config's worker of that
    role switched to ENGINE through override.env (the values the renderer would add for it)."""
    found = find_fleet(engine=engine, role=role, instance=instance)
    if found:
        return make(*found, **kw)
    env, fleet = find_fleet(role=role, instance=instance)
    n = make(env, fleet, **kw)
    if engine == "nixl":
        n.override(**NIXL_VALUES)
    else:
        n.override(DI_ENGINE=engine, DI_IMAGE=SEED_IMAGE, DI_KV_BUFFER_SIZE=n.values.get("DI_KV_BUFFER_SIZE") or "2e+11")
    return n


def make_node(tmp_path: Path, env: str, fleet: str | None, *, fakes: list[str] | None = None,
              uverbs: int = 2) -> Node:
    root = tmp_path / "node"
    (root / "etc").mkdir(parents=True)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name in FAKE_COMMANDS if fakes is None else fakes:
        if name != "python3":  # only tests that ask for it get a fake python3
            (bin_dir / name).symlink_to(FAKES / name)
    node_env = root / "etc" / "node.env"
    node_env.write_text(node_env_text(env, fleet))
    dev = root / "dev"
    (dev / "infiniband").mkdir(parents=True)
    for i in range(16):
        (dev / f"neuron{i}").touch()
    for i in range(uverbs):
        (dev / "infiniband" / f"uverbs{i}").touch()
    for sub in ("systemd", "run", "data", "etcd", "by-id", "state"):
        (root / sub).mkdir()
    (root / "fake-state").mkdir()
    # The registrar's etcd credentials as control host m0 leaves them (userdata/lib/etcd_trust.sh): a worker reads them.
    registrar = REFS.etcd_client_secret.replace("/", "_").replace(":", "_")
    (root / "fake-state" / f"secret-{registrar}").write_text(json.dumps(
        {"ca_cert": "CA\n", "cert": "CERT\n", "key": "KEY\n", "user": "di-register", "password": "pw"}))
    node = Node(root=root, values=rendered_values(env, fleet), env={
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(root),
        "DI_NODE_ENV": str(node_env),
        "DI_OVERRIDE_ENV": str(root / "etc" / "override.env"),
        "DI_HOME": str(SCRIPTS),
        "DI_SYSTEMD_DIR": str(root / "systemd"),
        "DI_RUN_DIR": str(root / "run"),
        "DI_KV_LOCK": str(root / "nrt_kv_store_server.lock"),
        "DI_DATA_DIR": str(root / "data"),
        "DI_DEV_ROOT": str(dev),
        "DI_ETCD_MOUNT": str(root / "etcd"),
        "DI_FSTAB": str(root / "etc" / "fstab"),
        "DI_DISK_BY_ID": str(root / "by-id"),
        "DI_NVME_GLOB": str(root / "by-id" / "nvme-Amazon_EC2_NVMe_Instance_Storage_*"),
        "FAKE_STATE": str(root / "fake-state"),
        "RETRY_SLEEP": "0",
        "BOOT_RETRY_STEP_SECONDS": "0",
        "ATTACH_WAIT_SLEEP": "0",
        "ATTACH_WAIT_SECONDS": "3",
        "ETCD_WAIT_SLEEP": "0",
        # A fake etcd answers the same on every poll: one look decides (a test wanting a real wait sets its own).
        "ETCD_WAIT_SECONDS": "0",
        "DI_SETTLE_SECONDS": "0",
        "DI_STATE_DIR": str(root / "state"),
        "DI_ETCD_DIR": str(root / "etcd-tls"),
        "ETCD_TRUST_WAIT_SECONDS": "0",
        "ETCD_TRUST_SLEEP": "0",
        # Lifecycle and drain waits in milliseconds (the fakes answer at once).
        "LIFECYCLE_STATE_WAIT_SECONDS": "0",
        "LIFECYCLE_POLL_SECONDS": "0.01",
        "LAUNCH_READY_POLL_SECONDS": "0.01",
        "LAUNCH_READY_TIMEOUT_SECONDS": "1",
        "DRAIN_POLL_SECONDS": "0",
        "DRAIN_SETTLE_SECONDS": "0",
    })
    # The temp filesystem is far smaller than a real NVMe array.
    node.override(DI_MIN_DATA_GB="1")
    node.set("all-mounted")
    return node


@pytest.fixture
def node(tmp_path):
    """`node(env, fleet)` (fleet None = control host) -> Node."""
    return lambda env, fleet=None, **kw: make_node(tmp_path, env, fleet, **kw)
