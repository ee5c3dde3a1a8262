"""Fake workers with KV-transfer faults, for the canary and the transfer telemetry.

KvFakeWorker is a FakeWorker that also:
- answers `return_token_ids` as vLLM does (each choice's `token_ids`, vllm-project/vllm vllm/entrypoints/openai
  CompletionRequest.return_token_ids), ids that depend on the prompt only, so a decode that read the prompt's KV
  from a prefill answers the ids it answers alone;
- counts the KV a decode "transferred" from a prefill (bytes per block read) and shows it on /metrics under the
  names vLLM's NIXL connector uses (model/observability/kv_telemetry.py NIXL_*): the transfer-time and bytes
  histograms and the failed-transfer counter;
- fails on demand (Faults): `wrong_tokens` returns different ids after a KV transfer (corrupt KV: the failure the
  canary exists for), `fail_transfer` answers a decode's transfer with HTTP 500 and counts a failed transfer.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from diproxy.testing.fake_worker import FakeWorker

# The histograms' bucket bounds, as vLLM's NixlPromMetrics declares them (transfer time: 0.005 s .. 5 s; bytes:
# 2 KiB .. 8 GiB in powers of four).
XFER_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0)
BYTES_BUCKETS = tuple(float(2 ** (10 + i)) for i in range(1, 25, 2))
BLOCK_BYTES = 2 * 1024 * 1024  # what one fake KV block "weighs"
XFER_SECONDS = 0.02  # what one fake transfer "takes"


@dataclass
class Faults:
    wrong_tokens: bool = False
    fail_transfer: bool = False


def reference_ids(prompt: Any, count: int) -> list[int]:
    """Greedy ids of a prompt: the same on every fake worker, as on every replica of one model."""
    base = zlib.crc32(json.dumps(prompt, sort_keys=True).encode()) % 30000
    return [base + i for i in range(count)]


class KvFakeWorker(FakeWorker):
    def __init__(self, *args: Any, faults: Faults | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults = faults or Faults()
        self.transfers: list[tuple[int, float]] = []  # (bytes, seconds) per KV transfer read by this decode
        self.failed_transfers = 0
        self.waiting = 0  # what /metrics reports as vllm:num_requests_waiting (a saturated fleet waits)

    @property
    def bytes_transferred(self) -> int:
        return sum(size for size, _ in self.transfers)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        kv = body.get("kv_transfer_params")
        remote = isinstance(kv, dict) and bool(kv.get("do_remote_prefill"))
        if remote and self.faults.fail_transfer:
            self.failed_transfers += 1
            return web.json_response({"error": {"message": "injected KV transfer failure", "type":
                                                "InternalServerError", "param": None, "code": 500}}, status=500)
        accepted = len(self.kv_received)
        response = await super()._answer(request)
        if remote and len(self.kv_received) > accepted:
            blocks = self.kv_received[-1].get("remote_block_ids") or []
            self.transfers.append((len(blocks) * BLOCK_BYTES, XFER_SECONDS))
        if (body.get("return_token_ids") and not body.get("stream") and isinstance(response, web.Response)
                and response.status == 200 and response.body is not None):
            payload = json.loads(response.body)
            count = int(payload.get("usage", {}).get("completion_tokens", 0))
            for choice in payload.get("choices", []):
                ids = reference_ids(body.get("prompt", body.get("messages")), count)
                if remote and self.faults.wrong_tokens and ids:
                    ids[-1] += 1
                choice["token_ids"] = ids
            return web.json_response(payload)
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        base = await super()._metrics(request)
        labels = 'engine="0",model_name="fake-model"'
        waiting = 'vllm:num_requests_waiting{engine="0",model_name="fake-model"}'
        lines = [(base.text or "").replace(f"{waiting} 0.0", f"{waiting} {float(self.waiting)}")]
        for name, buckets, index in (("vllm:nixl_xfer_time_seconds", XFER_TIME_BUCKETS, 1),
                                     ("vllm:nixl_bytes_transferred", BYTES_BUCKETS, 0)):
            values = [t[index] for t in self.transfers]
            lines.append(f"# TYPE {name} histogram\n")
            for bound in buckets:
                lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {sum(1 for v in values if v <= bound)}\n')
            lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {len(values)}\n')
            lines.append(f"{name}_count{{{labels}}} {len(values)}\n{name}_sum{{{labels}}} {float(sum(values))}\n")
        lines.append("# TYPE vllm:nixl_num_failed_transfers counter\n"
                     f"vllm:nixl_num_failed_transfers_total{{{labels}}} {float(self.failed_transfers)}\n")
        return web.Response(text="".join(lines), content_type="text/plain")
