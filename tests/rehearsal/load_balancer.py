"""HAProxy (Debian's package) on loopback as the stand-in for the internal Network Load Balancer: TCP mode, a health
check on each proxy's /ready, and a retry on a connection that fails, as the NLB's target health checks and its
routing only to healthy targets do. Its admin socket tells which backends are up."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Checks every 50 ms, down after 2 failures, up after 1 success: the NLB's checks are coarser (interval 10-300 s,
# https://docs.aws.amazon.com/elasticloadbalancing/latest/network/target-group-health-checks.html), so the
# rehearsal's figures are the proxy's and etcd's part of a failover, not the load balancer's detection time.
CONFIG = """
global
    stats socket {socket} mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch
frontend edge
    bind 127.0.0.1:{port}
    default_backend proxies
backend proxies
    option httpchk GET /ready
    http-check expect status 200
    default-server inter 50ms fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
"""


class LoadBalancer:
    def __init__(self, binary: str, port: int, backends: dict[str, int]) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="distack-lb-"))
        self.socket = self.directory / "admin.sock"
        self.port = port
        servers = "\n".join(f"    server {name} 127.0.0.1:{p} check" for name, p in backends.items())
        config = self.directory / "haproxy.cfg"
        config.write_text(CONFIG.format(socket=self.socket, port=port, servers=servers))
        self.process = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                                        stderr=open(self.directory / "haproxy.log", "wb"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def states(self) -> dict[str, str]:
        """Backend server -> UP/DOWN (HAProxy's `show stat` CSV: pxname, svname, ..., status)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
                admin.connect(str(self.socket))
                admin.sendall(b"show stat\n")
                text = b"".join(iter(lambda: admin.recv(65536), b"")).decode()
        except OSError:
            return {}
        header, *rows = [line for line in text.splitlines() if line]
        columns = header.lstrip("# ").split(",")
        found = {}
        for row in rows:
            values = dict(zip(columns, row.split(",")))
            if values.get("pxname") == "proxies" and values.get("svname") not in ("BACKEND", "FRONTEND"):
                found[values["svname"]] = values["status"].split()[0]
        return found

    def wait(self, wanted: dict[str, str], timeout: float = 10.0) -> float:
        """Seconds until the backends' states are WANTED."""
        start = time.monotonic()
        while self.states() != wanted:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {(self.directory / 'haproxy.log').read_text()[-2000:]}")
            if time.monotonic() - start > timeout:
                raise AssertionError(f"load balancer states {self.states()}, wanted {wanted}")
            time.sleep(0.01)
        return time.monotonic() - start

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
