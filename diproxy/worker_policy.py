"""Which registry entries the proxy accepts as workers. The registry is etcd, which workers write: without a check, a
rogue or misconfigured writer could list a host outside the worker subnets (and receive prompts, or write client
answers as a decode), a hostname (resolved by whoever controls DNS), or thousands of junk keys (each probed every
health interval). Only IPv4 literals inside the worker networks, on a port a vLLM endpoint may use, up to a bounded
number of workers, are taken; every refusal is counted and logged once per key."""

from __future__ import annotations

import ipaddress
import logging
from typing import Callable, Iterable

log = logging.getLogger(__name__)

WorkerKey = tuple[str, str, int]


class WorkerPolicy:
    def __init__(self, networks: Iterable[str] = (), max_workers: int = 1024,
                 on_refused: Callable[[str], None] | None = None) -> None:
        # No networks: any IPv4 literal (a loopback or a test deployment); the stack always passes the worker subnets.
        self.networks = tuple(ipaddress.IPv4Network(n) for n in networks)
        self.max_workers = max_workers
        self._on_refused = on_refused or (lambda reason: None)
        self._logged: set[WorkerKey] = set()

    def _refuse(self, key: WorkerKey, reason: str) -> bool:
        self._on_refused(reason)
        if key not in self._logged and len(self._logged) < self.max_workers:
            self._logged.add(key)
            log.warning("registry entry %s/%s:%d refused: %s", *key, reason)
        return False

    def admits(self, key: WorkerKey, registered: int) -> bool:
        """Whether KEY may join a registry that already holds REGISTERED workers."""
        _, host, port = key
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            return self._refuse(key, "worker_not_ipv4")
        if self.networks and not any(address in network for network in self.networks):
            return self._refuse(key, "worker_outside_networks")
        if not 1024 <= port <= 65535:
            return self._refuse(key, "worker_bad_port")
        if registered >= self.max_workers:
            return self._refuse(key, "workers_over_limit")
        return True
