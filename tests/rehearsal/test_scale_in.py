"""Scale-in rehearsal on loopback: a real etcd, the DiStack proxy (NIXL protocol), fake vLLM workers streaming, and the
node's own scripts against a fake instance metadata service and a fake Auto Scaling API.

One node (a colocated worker: a prefill and a decode endpoint, listed in etcd by two real di-register processes) is
taken away mid-stream the way Auto Scaling does it: its target lifecycle state turns Terminated, and the real
di-lifecycle runs the drain path (ops/drain.sh) and completes the termination hook. Clients stream all along: no
request may fail, the hook must be completed with CONTINUE only after the node's in-flight requests reached zero and
its servers stopped. Then a decode worker is killed outright, without the drain path: streams fail, which shows the
rehearsal would notice a drain that did not drain."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from diproxy.testing.etcd_server import EtcdServer
from diproxy.testing.fake_imds import FakeImds
from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from tests.proxy.conftest import di_flags, post_stream, wait_ready, wait_until
from tests.tools import needs

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "userdata"
FAKES = Path(__file__).resolve().parent / "fakes"
FAKE_AWS = ROOT / "tests" / "userdata" / "fakes" / "_fake"
INSTANCE_ID = "i-0123456789abcdef0"
GROUP = "di-rehearsal-ColocatedFleetGroup-0A1B2C3D"
PREFIX = "/workers/"  # what di-register writes under
CLIENTS = 6
# Streams of 8 tokens, 10 ms apart: each takes ~80 ms, so the node always has some in flight when it is taken away.
PACE = Behaviour(tokens=8, token_interval=0.01, headers_first=True)
LONG = Behaviour(tokens=30, token_interval=0.01, headers_first=True)


@dataclass
class Node:
    """The node being taken away: its fake servers, the real di-register and di-lifecycle processes, its state dir."""

    state: Path
    env: dict[str, str]
    servers: dict[str, FakeWorker]  # unit name -> fake vLLM behind it
    processes: list[subprocess.Popen] = field(default_factory=list)
    stopped: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # unit -> (when, in flight, KV held)

    def start(self, script: str, *args: str, pid_unit: str | None = None) -> subprocess.Popen:
        log = open(self.state / f"{script}{''.join(args)}.log", "w", encoding="utf-8")
        proc = subprocess.Popen(["bash", str(SCRIPTS / script), *args], env=self.env, stdout=log, stderr=log)
        log.close()
        self.processes.append(proc)
        if pid_unit:
            (self.state / f"{pid_unit}.pid").write_text(str(proc.pid))
        return proc

    async def serve_stop_requests(self) -> None:
        """What systemd does for `systemctl stop di-vllm@N`: stop that server (gracefully), then report it inactive."""
        while True:
            for unit, server in self.servers.items():
                if unit not in self.stopped and (self.state / f"stop-{unit}").exists():
                    self.stopped[unit] = (time.monotonic(), server.in_flight, server.kv_blocks_held)
                    await server.stop()
                    (self.state / f"inactive-{unit}").touch()
            await asyncio.sleep(0.005)

    def lifecycle_calls(self) -> list[list[str]]:
        log = self.state / "calls.jsonl"
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [c["argv"] for c in calls if c["cmd"] == "aws" and c["argv"][:1] == ["autoscaling"]]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(self.state.glob("*.log")))

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


def node_env(tmp_path: Path, etcd: str, imds: FakeImds, prefill: FakeWorker, decode: FakeWorker) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").symlink_to(FAKE_AWS)
    state = tmp_path / "state"
    state.mkdir()
    values = {"DI_DEPLOYMENT": "rehearsal", "DI_ROLE": "colocated", "DI_FLEET": "colocated", "DI_MODE": "disaggregated",
              "DI_ENGINE": "nixl", "DI_REGION": "us-east-2", "DI_ETCD": etcd,
              "DI_ENDPOINTS": f"prefill:0-3:{prefill.port} decode:4-7:{decode.port}",
              "DI_LAUNCH_HOOK": "di-launch", "DI_TERMINATION_HOOK": "di-termination", "DI_DRAIN_TIMEOUT_SECONDS": "20"}
    (tmp_path / "node.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
    (state / "asg-name").write_text(GROUP)
    return {
        "PATH": f"{FAKES}:{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "FAKE_STATE": str(state),
        "DI_NODE_ENV": str(tmp_path / "node.env"), "DI_OVERRIDE_ENV": str(tmp_path / "override.env"),
        "DI_RUN_DIR": str(tmp_path / "run"), "DI_STATE_DIR": str(tmp_path / "di-state"), "DI_IMDS_URL": imds.url,
        "RETRY_SLEEP": "0",
        # Every wait in milliseconds; the registrar's lease outlives the test, so a key that goes was revoked.
        "REGISTER_INTERVAL_SECONDS": "0.05", "REGISTER_TTL_SECONDS": "30", "LIFECYCLE_POLL_SECONDS": "0.02",
        "DRAIN_POLL_SECONDS": "0.02", "DRAIN_SETTLE_SECONDS": "0.1",
    }


@dataclass
class Load:
    """Clients streaming completions through the proxy back to back; results tagged with the phase they ended in."""

    session: aiohttp.ClientSession
    url: str
    phase: str = "drain"
    results: list[tuple[str, object]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self) -> None:
        while not self.stop.is_set():
            result = await post_stream(self.session, self.url + "/v1/completions", {"prompt": "x", "max_tokens": 40})
            self.results.append((self.phase, result))

    def failed(self, phase: str) -> list[object]:
        return [r for p, r in self.results if p == phase and not (r.status == 200 and r.done and not r.errors)]

    def count(self, phase: str) -> int:
        return sum(1 for p, _ in self.results if p == phase)


@needs("etcd")
def test_scale_in_drains_a_node_mid_stream_without_a_failed_request(tmp_path, report_figures):
    async def scenario() -> None:
        wall = time.time() - time.monotonic()  # wall clock (the fake systemctl's log) to monotonic
        survivors = [await FakeWorker(role, etcd=etcd.address, prefix=PREFIX, label=f"S{role[0]}",
                                      behaviour=PACE).start() for role in ("prefill", "decode")]
        # The node's servers register nothing themselves: di-register does (vLLM's NixlConnector does not).
        victim_p = await FakeWorker("prefill", label="VP", behaviour=PACE).start(register=False)
        victim_d = await FakeWorker("decode", label="VD", behaviour=PACE).start(register=False)
        env = node_env(tmp_path, etcd.address, imds, victim_p, victim_d)
        node = Node(tmp_path / "state", env, {"di-vllm@0.service": victim_p, "di-vllm@1.service": victim_d})
        killed: FakeWorker | None = None
        try:
            async with RunningProxy(di_flags("nixl", etcd.address, PREFIX, "--selection", "least-in-flight")) as proxy, \
                    aiohttp.ClientSession() as session:
                for index in ("0", "1"):
                    node.start("di-register", index, pid_unit=f"di-register@{index}.service")
                lifecycle = node.start("di-lifecycle")
                stopper = asyncio.create_task(node.serve_stop_requests())
                registry = proxy.state.registry
                assert registry is not None
                await wait_ready(session, proxy.url)
                await wait_until(lambda: len(registry.usable("prefill")) == 2 and len(registry.usable("decode")) == 2,
                                 what="survivors and the node's endpoints usable")
                load = Load(session, proxy.url)
                clients = [asyncio.create_task(load.client()) for _ in range(CLIENTS)]

                # Scale-in: mid-stream, Auto Scaling picks this node.
                await wait_until(lambda: victim_d.in_flight >= 2 and len(victim_p.requests) >= 3,
                                 what="the node serving streams")
                served_before = len(victim_p.requests) + len(victim_d.requests)
                terminated_at = time.monotonic()
                imds.values["autoscaling/target-lifecycle-state"] = "Terminated"
                await wait_until(lambda: lifecycle.poll() is not None, timeout=10, what="di-lifecycle done")
                completed_at = time.monotonic()
                assert lifecycle.returncode == 0, node.logs()
                drained_requests = load.count("drain")

                # Without the drain path: a decode worker killed outright while it streams.
                load.phase = "kill"
                killed = await FakeWorker("decode", etcd=etcd.address, prefix=PREFIX, label="K", lease_ttl=1,
                                          behaviour=LONG).start()
                await wait_until(lambda: killed.in_flight >= 2, what="the doomed worker streaming")
                await asyncio.sleep(0.05)
                await killed.kill()
                await wait_until(lambda: load.count("kill") >= 3 * CLIENTS, what="streams after the kill")
                load.stop.set()
                await asyncio.gather(*clients)
                stopper.cancel()
        finally:
            node.close()
            for worker in (*survivors, victim_p, victim_d, *([killed] if killed else [])):
                await worker.stop()

        log = node.logs()
        # Zero failed requests while the node left, and it did serve streams when it was picked.
        assert load.failed("drain") == [], [r.raw[-300:] for r in load.failed("drain")][:2]
        assert served_before > 0
        # Step 1 first: once the registrars were stopped (their leases revoked), the proxy sent the node nothing new.
        lines = (node.state / "systemctl.log").read_text().splitlines()
        deregistered = max(float(line.split()[0]) - wall for line in lines if " stopped di-register@" in line)
        # (0.5 s for the revoke and the proxy's watch event on a loaded machine; a node still picked would be picked
        # for the whole drain, seconds.)
        late = [r for r in victim_p.requests + victim_d.requests if r.at > deregistered + 0.5]
        assert late == [], f"{len(late)} requests reached the node after its deregistration"
        # Step 3 only once vLLM's counters (and the prefill's held KV blocks) were at zero.
        assert set(node.stopped) == {"di-vllm@0.service", "di-vllm@1.service"}, log
        assert all(in_flight == 0 and held == 0 for _, in_flight, held in node.stopped.values()), node.stopped
        # Step 4 last: the termination hook completed with CONTINUE, on the group found at run time.
        (complete,) = [c for c in node.lifecycle_calls() if c[1] == "complete-lifecycle-action"]
        assert complete[complete.index("--lifecycle-action-result") + 1] == "CONTINUE"
        assert complete[complete.index("--lifecycle-hook-name") + 1] == "di-termination"
        assert complete[complete.index("--auto-scaling-group-name") + 1] == GROUP
        assert complete[complete.index("--instance-id") + 1] == INSTANCE_ID
        last_stop = max(when for when, _, _ in node.stopped.values())
        assert terminated_at < last_stop < completed_at
        assert "drained: di-vllm@0.service di-vllm@1.service" in log
        # The plain kill does lose streams: the rehearsal can tell a drain from none.
        kill_failures = len(load.failed("kill"))
        assert kill_failures > 0
        # Shown in the run's summary (tests/conftest.py pytest_terminal_summary), under xdist too.
        report_figures("scale-in rehearsal",
                       f"{drained_requests} streamed requests, {len(load.failed('drain'))} failed, node drained and "
                       f"hook completed {completed_at - terminated_at:.2f}s after Terminated ({served_before} requests "
                       f"served by the node before); plain kill instead: {kill_failures} of {load.count('kill')} failed")

    with EtcdServer() as etcd, FakeImds({"instance-id": INSTANCE_ID, "local-ipv4": "127.0.0.1",
                                        "autoscaling/target-lifecycle-state": "InService"}) as imds:
        asyncio.run(asyncio.wait_for(scenario(), 30))
