"""In-flight caps: how many requests the proxy carries at once, in all and per client, so that one client (or a
flood of slow streams) cannot pile every request onto the workers' queues or the proxy's memory. A request over a
cap is answered 429 with Retry-After at once, before it costs a prefill.

The client is the connection's peer address: the internal Network Load Balancer preserves client IP addresses for
instance targets (https://docs.aws.amazon.com/elasticloadbalancing/latest/network/edit-target-group-attributes.html
#client-ip-preservation), and X-Forwarded-For is never trusted, since any client can write it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator

from diproxy.errors import ClientFacingError


class Admission:
    """Counts requests in flight; `admit(client)` holds one place for the request's whole life."""

    def __init__(self, max_in_flight: int, max_per_client: int, retry_after: int) -> None:
        if max_in_flight < 1 or max_per_client < 1:
            raise ValueError("in-flight caps must be at least 1")
        self.max_in_flight, self.max_per_client, self.retry_after = max_in_flight, max_per_client, retry_after
        self.in_flight = 0
        self._per_client: Counter[str] = Counter()

    def _refuse(self, message: str, code: str) -> ClientFacingError:
        return ClientFacingError(429, message, "rate_limit_error", code, {"Retry-After": str(self.retry_after)})

    @contextlib.contextmanager
    def admit(self, client: str) -> Iterator[None]:
        if self.in_flight >= self.max_in_flight:
            raise self._refuse(f"the proxy carries {self.in_flight} requests, its limit; retry later",
                               "proxy_at_capacity")
        if self._per_client[client] >= self.max_per_client:
            raise self._refuse(f"this client has {self._per_client[client]} requests in flight, the per-client "
                               f"limit; retry later", "client_at_capacity")
        self.in_flight += 1
        self._per_client[client] += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]  # bounded by the clients in flight, not by every client ever seen

    def clients(self) -> int:
        return len(self._per_client)
