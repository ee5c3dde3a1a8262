"""A byte-for-byte TCP relay on uvloop: each client connection gets its own upstream connection, and bytes are
copied both ways without being parsed. It is the least any extra process on a request's path can cost, so the
proxy benchmark can tell that cost apart from the cost of handling HTTP in Python.

Usage: python bench/tcp_relay.py UPSTREAM_HOST:UPSTREAM_PORT   (prints "READY HOST:PORT" once listening)"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from diproxy.event_loop import new_event_loop  # noqa: E402


class _Pipe(asyncio.Protocol):
    """One direction's reader: what arrives on this connection is written to `peer`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.early = bytearray()  # bytes that arrived before the other side was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early += data
        else:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()

    def attach(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        if self.early:
            peer.write(bytes(self.early))
            self.early.clear()


async def serve(upstream_host: str, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()

    def on_client() -> _Pipe:
        client_side = _Pipe()

        async def connect() -> None:
            try:
                transport, upstream_side = await loop.create_connection(_Pipe, upstream_host, upstream_port)
            except OSError:
                if client_side.transport is not None:
                    client_side.transport.close()
                return
            assert client_side.transport is not None
            upstream_side.attach(client_side.transport)
            client_side.attach(transport)

        loop.create_task(connect())
        return client_side

    server = await loop.create_server(on_client, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"READY {host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> int:
    host, _, port = sys.argv[1].rpartition(":")
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(host, int(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
