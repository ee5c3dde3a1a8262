"""A stand-in for the EC2 instance metadata service, IMDSv2 only, on loopback: a PUT to /latest/api/token with
X-aws-ec2-metadata-token-ttl-seconds gives a token, and GET /latest/meta-data/PATH answers only with that token in
X-aws-ec2-metadata-token (401 without it, 404 for a path it has no value for), as the service does
(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html). A test sets values,
for instance autoscaling/target-lifecycle-state, while node scripts poll it."""

from __future__ import annotations

import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeImds:
    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values: dict[str, str] = dict(values or {})
        self.token = secrets.token_hex(16)
        self.token_requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._reply(400)
                    return
                owner.token_requests += 1
                self._reply(200, owner.token)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != owner.token:
                    self._reply(401)
                    return
                prefix = "/latest/meta-data/"
                value = owner.values.get(self.path[len(prefix):]) if self.path.startswith(prefix) else None
                if value is None:
                    self._reply(404)
                else:
                    self._reply(200, value)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self) -> "FakeImds":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
