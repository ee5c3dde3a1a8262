"""NIXL side-channel ports of colocated endpoints: what the node script gives each endpoint (userdata/engines/nixl.sh,
run with bash from the node.env the stack renders) leaves room for one listener per TP rank, as vLLM's NixlConnector
has bound them (VLLM_NIXL_SIDE_CHANNEL_PORT + tp_rank), and the config rules check the same ports."""

from __future__ import annotations

import subprocess

import pytest

from model.engines import nixl
from model.loader import load_environment
from tests.userdata.conftest import SCRIPTS, rendered_values

# Shipped nixl configs with more than one endpoint per instance at TP >= 2.
MULTI_ENDPOINT = [(env, fleet) for env in ("dev", "gpu-dev", "gpu-xpyd", "prod", "xpyd")
                  for fleet, spec in load_environment(env).fleets.items() if len(spec.resolved_endpoints) > 1]


def node_ports(values: dict[str, str], count: int) -> list[int]:
    """VLLM_NIXL_SIDE_CHANNEL_PORT of endpoints 0..count-1, as the node script computes it from node.env."""
    script = f'. "{SCRIPTS}/engines/nixl.sh" && for i in $(seq 0 {count - 1}); do nixl_side_channel_port "$i"; done'
    env = {k: v for k, v in values.items() if k.startswith("DI_NIXL_")}
    out = subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return [int(line) for line in out.split()]


@pytest.mark.parametrize("env,fleet", MULTI_ENDPOINT, ids=lambda v: v)
def test_colocated_endpoints_side_channel_ranks_never_share_a_port(env, fleet):
    values = rendered_values(env, fleet)
    spec = load_environment(env).fleets[fleet]
    tp = spec.tensor_parallel
    ports = node_ports(values, len(spec.resolved_endpoints))
    # Every port any TP rank of any endpoint may listen on, once only, and never an API port.
    held = [port + rank for port in ports for rank in range(tp)]
    assert len(held) == len(set(held)), (env, fleet, ports, tp)
    assert not set(held) & {ep.port for ep in spec.resolved_endpoints}
    # The node and the rules agree on the ports.
    assert [nixl.side_channel_ports(int(values["DI_NIXL_SIDE_CHANNEL_BASE_PORT"]), ep.index, tp).start
            for ep in spec.resolved_endpoints] == ports


def test_dev_endpoints_sit_100_ports_apart_as_the_tutorial_s_5559_and_5659():
    values = rendered_values("dev", "colocated")
    assert node_ports(values, 2) == [5559, 5659]
