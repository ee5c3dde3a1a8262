"""Stopping an endpoint delivers SIGTERM to the server process, for both engines: di-run run and di-run stop against
a docker that really runs the container's processes (tests/userdata/container/docker), and a server that records
SIGTERM. The same container with the DLC's own ENTRYPOINT wrapper (subprocess.check_call, no forwarding) shows
what the fix changes: the server is killed without ever seeing SIGTERM."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.userdata.conftest import SCRIPTS, engine_node

CONTAINER = Path(__file__).resolve().parent / "container"
# One `docker stop -t` second lasts this long in the fake, so the SIGKILL case costs a fraction of a second.
SECOND = "0.05"
# Where the stop timeout always runs out (the server never sees SIGTERM), a shorter second still.
SHORT_SECOND = "0.01"


def wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def container_env(n):
    return {**n.env, "PATH": f"{CONTAINER}:{CONTAINER / 'bin'}:{n.env['PATH']}", "FAKE_DOCKER_SECOND": SECOND,
            "DI_STOP_TIMEOUT": "20", "DI_LOCAL_IP": "10.42.1.5"}


def dlc_wrapped(argv: list[str]) -> list[str]:
    """The same `docker run` without the fix: no --init, and the server command handed to the image's ENTRYPOINT."""
    argv = [w for w in argv if w != "--init"]
    at = argv.index("--entrypoint")
    entry = argv[at + 1]
    del argv[at:at + 2]
    image = at  # the image now sits where --entrypoint was
    return [*argv[:image + 1], entry, *argv[image + 1:]]


def docker_words(n, env) -> list[str]:
    proc = subprocess.run(["bash", "-c", f'. "{SCRIPTS}/di-run" && load_node_env && load_engine && vllm_docker_args 0'],
                          env=env, capture_output=True, text=True, check=True)
    return proc.stdout.splitlines()


def stop_endpoint(n, env, server: subprocess.Popen) -> int:
    wait_for(n.state / "server-started")
    subprocess.run(["bash", str(SCRIPTS / "di-run"), "stop", "vllm", "0"], env=env, check=True, timeout=30)
    return server.wait(30)


@pytest.mark.parametrize("engine,server", [("nixl", "vllm serve"), ("neuron-connector", "python3 -m vllm.entrypoints")])
def test_docker_stop_reaches_the_server_which_exits_cleanly(node, engine, server):
    n = engine_node(node, engine, "prefill", instance="trn2")
    env = container_env(n)
    unit = subprocess.Popen(["bash", str(SCRIPTS / "di-run"), "run", "vllm", "0"], env=env)
    try:
        code = stop_endpoint(n, env, unit)
    finally:
        unit.kill()
    started = (n.state / "server-started").read_text()
    assert f"/{server.split()[0]} {server.split()[1]}" in started  # the server itself, not a wrapper
    assert (n.state / "server-got-sigterm").read_text().strip() == "SIGTERM"
    assert not (n.state / "killed-di-vllm-0").exists()
    assert code == 0  # `docker run` ends with the server's own clean exit, so systemd sees a clean stop


@pytest.mark.parametrize("engine", ["nixl", "neuron-connector"])
def test_with_the_dlc_entrypoint_wrapper_the_server_never_sees_sigterm(node, engine):
    n = engine_node(node, engine, "prefill", instance="trn2")
    env = container_env(n)
    argv = dlc_wrapped(docker_words(n, env))
    env["FAKE_DOCKER_SECOND"] = SHORT_SECOND
    unit = subprocess.Popen(["docker", *argv], env=env)
    try:
        code = stop_endpoint(n, env, unit)
    finally:
        unit.kill()
    assert (n.state / "dropped-di-vllm-0").exists()  # PID 1 (vllm_entrypoint.py) has no SIGTERM handler
    assert (n.state / "killed-di-vllm-0").exists()
    assert not (n.state / "server-got-sigterm").exists()
    assert code == 128 + 9


def test_the_stop_timeout_leaves_systemd_time_to_spare():
    # docker stop -t must end before the unit's TimeoutStopSec, or systemd kills the docker client first.
    run = (SCRIPTS / "di-run").read_text()
    default = int(run.split('DI_STOP_TIMEOUT:-')[1].split('}')[0])
    unit = (SCRIPTS / "units" / "di-vllm@.service").read_text()
    stop_sec = int(unit.split("TimeoutStopSec=")[1].split()[0])
    assert default + 10 <= stop_sec
