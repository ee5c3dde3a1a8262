"""The correctness canary: does disaggregated serving answer what one server would?

For each prefill->decode pair it sends one fixed prompt, greedy (temperature 0, fixed seed), a few tokens:
1. through the pair, as the proxy does (diproxy/protocols/nixl.py): prefill with max_tokens 1 and kv_transfer_params
   asking for a remote decode, then decode with the kv_transfer_params prefill returned (remote_host rewritten to the
   prefill's address), so decode reads the prompt's KV over NIXL;
2. to the same decode alone, without kv_transfer_params, so vLLM prefills the prompt locally.
The generated token ids must be equal. vLLM returns them when asked with `return_token_ids` ("If specified, the
result will include token IDs alongside the generated text": vllm-project/vllm vllm/entrypoints/openai protocol,
CompletionRequest.return_token_ids; each choice then carries `token_ids`). Comparing ids, not text, catches a
difference that detokenizes to the same string.

Cost and reach: every run checks each prefill and each decode endpoint at least once (max(P, D) pairs, one
reference per decode), and rotates which prefill meets which decode from one run to the next, so every pair is
covered within min(P, D) runs and a bad endpoint is seen in the first run. It talks to the workers directly, not
through the proxy, so no client request waits behind it and the proxy's metrics stay the clients'. A pair whose
endpoints have requests waiting (vllm:num_requests_waiting > --max-waiting) is skipped: the canary must not add
to a saturated fleet.

Results go to CloudWatch (namespace DiStack/Proxy, which the control host may write): CanaryMatch per pair (1 equal,
0 different), and per run CanaryMismatches, CanaryChecks, CanaryErrors and CanarySkipped with dimension Deployment
only, which the alarm reads. It exits 1 when a pair differs or fails, so `dictl canary` shows it. Runs on the
control host with the proxy's virtualenv and settings (/etc/di/proxy.env): python -m diproxy.canary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import aiohttp

from diproxy.config import HostPort
from diproxy.etcd_access import EtcdAccess
from diproxy.etcd_gateway import EtcdGateway
from diproxy.protocols.nixl import KV_TRANSFER_PARAMS, decode_request, prefill_request
from diproxy.registry import parse_worker_key
from diproxy.shipper.prometheus_text import ExpositionError, parse
from diproxy.workers import DECODE, PREFILL

# A fixed prompt and a few greedy tokens: the check costs one short prefill and a handful of decode steps per leg.
PROMPT = "The three primary colors are"
MAX_TOKENS = 8
SEED = 1234
WAITING = "vllm:num_requests_waiting"
NAMESPACE = "DiStack/Proxy"
MATCH, MISMATCHES, CHECKS, ERRORS, SKIPPED = ("CanaryMatch", "CanaryMismatches", "CanaryChecks", "CanaryErrors",
                                              "CanarySkipped")
# Every metric the canary publishes and its dimensions (the stack's dashboard and alarms read these names).
PUBLISHED = {MATCH: ("Deployment", "Pair"), MISMATCHES: ("Deployment",), CHECKS: ("Deployment",),
             ERRORS: ("Deployment",), SKIPPED: ("Deployment",)}


class Endpoint(HostPort):
    """A worker endpoint: the proxy's HOST:PORT, and where its HTTP API is."""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Pair:
    prefill: Endpoint
    decode: Endpoint

    @property
    def name(self) -> str:
        return f"{self.prefill}>{self.decode}"


@dataclass
class PairResult:
    pair: str
    outcome: str  # match | mismatch | error | skipped
    detail: str = ""
    disaggregated: list[int] = field(default_factory=list)
    local: list[int] = field(default_factory=list)


def rotation(prefills: Sequence[Endpoint], decodes: Sequence[Endpoint], turn: int) -> list[Pair]:
    """The pairs of run number `turn`: each endpoint of the larger role once, the smaller role's endpoints shifted by
    `turn`, so successive turns meet every prefill with every decode."""
    prefills, decodes = sorted(prefills, key=str), sorted(decodes, key=str)
    if not prefills or not decodes:
        return []
    if len(prefills) >= len(decodes):
        return [Pair(p, decodes[(i + turn) % len(decodes)]) for i, p in enumerate(prefills)]
    return [Pair(prefills[(i + turn) % len(prefills)], d) for i, d in enumerate(decodes)]


def request_body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": SEED,
            "return_token_ids": True, "stream": False}


def token_ids(answer: Mapping[str, Any]) -> list[int]:
    """The generated token ids of a completion answered with return_token_ids."""
    choices = answer.get("choices") or []
    ids = choices[0].get("token_ids") if choices and isinstance(choices[0], dict) else None
    if not isinstance(ids, list):
        raise CanaryError("the answer has no token_ids (the server ignored return_token_ids)")
    return [int(i) for i in ids]


class CanaryError(Exception):
    pass


class Canary:
    def __init__(self, session: aiohttp.ClientSession, model: str, *, api_key: str | None = None,
                 max_waiting: float = 0.0, timeout: float = 120.0) -> None:
        self.session, self.model, self.max_waiting = session, model, max_waiting
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._local: dict[Endpoint, list[int]] = {}

    async def _post(self, endpoint: Endpoint, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        async with self.session.post(f"{endpoint.base_url}/v1/completions", json=body, timeout=self.timeout,
                                     headers={**self.headers, "X-Request-Id": request_id}) as reply:
            text = await reply.text()
            if reply.status != 200:
                raise CanaryError(f"{endpoint} answered HTTP {reply.status}: {text[:300]}")
            return json.loads(text)

    async def waiting(self, endpoint: Endpoint) -> float:
        async with self.session.get(f"{endpoint.base_url}/metrics", timeout=self.timeout) as reply:
            if reply.status != 200:
                raise CanaryError(f"{endpoint} /metrics answered HTTP {reply.status}")
            try:
                scrape = parse(await reply.text())
            except ExpositionError as exc:
                raise CanaryError(f"{endpoint} /metrics: {exc}") from None
        return sum(s.value for s in scrape.family(WAITING))

    async def local(self, decode: Endpoint, uid: str) -> list[int]:
        """The decode's own answer, prefilled locally (no kv_transfer_params): the reference, once per run."""
        if decode not in self._local:
            self._local[decode] = token_ids(await self._post(decode, decode_request(request_body(self.model)),
                                                             f"canary-local-{uid}"))
        return self._local[decode]

    async def check(self, pair: Pair, uid: str) -> PairResult:
        try:
            busy = max(await self.waiting(pair.prefill), await self.waiting(pair.decode))
            if busy > self.max_waiting:
                return PairResult(pair.name, "skipped", f"{busy:g} requests waiting (saturated)")
            body = request_body(self.model)
            first = await self._post(pair.prefill, prefill_request(body), f"canary-{uid}")
            params = first.get(KV_TRANSFER_PARAMS)
            if not isinstance(params, dict) or not params:
                raise CanaryError(f"prefill {pair.prefill} returned no kv_transfer_params: nothing was handed over")
            handed = {**params, "remote_host": pair.prefill.host}
            disaggregated = token_ids(await self._post(pair.decode, decode_request(body, handed), f"canary-{uid}"))
            local = await self.local(pair.decode, uid)
        except (CanaryError, aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return PairResult(pair.name, "error", str(exc) or type(exc).__name__)
        if disaggregated == local:
            return PairResult(pair.name, "match", "", disaggregated, local)
        return PairResult(pair.name, "mismatch", "token ids differ between prefill->decode and decode alone",
                          disaggregated, local)

    async def run(self, pairs: Sequence[Pair], uid: str) -> list[PairResult]:
        # One pair after another: a canary run never adds more than one request to any endpoint.
        return [await self.check(pair, f"{uid}-{index}") for index, pair in enumerate(pairs)]


async def registered(session: aiohttp.ClientSession, etcd: EtcdAccess,
                     prefix: str) -> tuple[list[Endpoint], list[Endpoint]]:
    """The prefill and decode endpoints registered in etcd, as the proxy finds them (diproxy/registry.py), reached
    as the proxy reaches it: every member in turn, with its TLS files and user where proxy.env names them."""
    pairs, _ = await etcd.gateway(session).get_prefix(prefix)
    found: dict[str, list[Endpoint]] = {PREFILL: [], DECODE: []}
    for kv in pairs:
        key = parse_worker_key(kv.key, prefix)
        if key is not None:
            found[key[0]].append(Endpoint(key[1], key[2]))
    return found[PREFILL], found[DECODE]


def datums(deployment: str, results: Sequence[PairResult], at: datetime) -> list[dict[str, Any]]:
    """CloudWatch MetricDatum entries of one run (PutMetricData)."""
    def datum(name: str, value: float, **extra: str) -> dict[str, Any]:
        dims = [{"Name": "Deployment", "Value": deployment}] + [{"Name": k, "Value": v} for k, v in extra.items()]
        return {"MetricName": name, "Dimensions": dims, "Timestamp": at, "Value": value, "Unit": "Count"}

    out = [datum(MATCH, 1.0 if r.outcome == "match" else 0.0, Pair=r.pair)
           for r in results if r.outcome in ("match", "mismatch")]
    count = {kind: sum(1 for r in results if r.outcome == kind) for kind in ("match", "mismatch", "error", "skipped")}
    out += [datum(MISMATCHES, float(count["mismatch"])), datum(CHECKS, float(count["match"] + count["mismatch"])),
            datum(ERRORS, float(count["error"])), datum(SKIPPED, float(count["skipped"]))]
    return out


def _client(region: str | None) -> Any:
    import boto3

    return boto3.session.Session(region_name=region).client("cloudwatch")


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diproxy.canary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=env.get("DI_MODEL_ID"), help="served model id (default: DI_MODEL_ID)")
    parser.add_argument("--etcd", default=env.get("DIPROXY_ETCD"), help="etcd HOST:PORT[,HOST:PORT...] (default: DIPROXY_ETCD)")
    parser.add_argument("--etcd-prefix", default=env.get("DIPROXY_ETCD_PREFIX") or "/workers/")
    parser.add_argument("--deployment", default=env.get("DIPROXY_CLOUDWATCH_DEPLOYMENT"))
    parser.add_argument("--namespace", default=env.get("DIPROXY_CLOUDWATCH_NAMESPACE") or NAMESPACE)
    parser.add_argument("--region", default=env.get("DIPROXY_AWS_REGION") or None)
    parser.add_argument("--period", type=float, default=300.0,
                        help="seconds between scheduled runs: the rotation advances one step per period")
    parser.add_argument("--max-waiting", type=float, default=0.0,
                        help="skip a pair when either endpoint has more requests waiting than this")
    parser.add_argument("--no-publish", action="store_true", help="print the results only")
    args = parser.parse_args(argv)
    for name in ("model", "etcd", "deployment"):
        if not getattr(args, name):
            parser.error(f"--{name} is required (or its variable in the environment)")
    return args


async def main_async(args: argparse.Namespace, *, client: Callable[[str | None], Any] = _client,
                     clock: Callable[[], float] = time.time, out: Any = None,
                     api_key: str | None = None, env: Mapping[str, str] | None = None) -> int:
    """ENV: where proxy.env's DIPROXY_ETCD_* (TLS files, user) are read from."""
    out = out or sys.stdout
    now = clock()
    async with aiohttp.ClientSession() as session:
        prefills, decodes = await registered(session, EtcdAccess.of_environment(args.etcd, env or {}),
                                             args.etcd_prefix)
        pairs = rotation(prefills, decodes, int(now // args.period))
        results = await Canary(session, args.model, api_key=api_key, max_waiting=args.max_waiting).run(
            pairs, f"{int(now)}")
    for result in results:
        print(json.dumps(asdict(result)), file=out)
    if not pairs:
        print(f"canary: no prefill/decode pair registered ({len(prefills)} prefill, {len(decodes)} decode)", file=out)
    if not args.no_publish:
        data = datums(args.deployment, results, datetime.fromtimestamp(now, timezone.utc))
        await asyncio.to_thread(client(args.region).put_metric_data, Namespace=args.namespace, MetricData=data)
    bad = [r for r in results if r.outcome in ("mismatch", "error")]
    summary = {k: sum(1 for r in results if r.outcome == k) for k in ("match", "mismatch", "error", "skipped")}
    print(f"canary: {summary['match']} match, {summary['mismatch']} mismatch, {summary['error']} error, "
          f"{summary['skipped']} skipped of {len(pairs)} pair(s)", file=out)
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = parse_args(argv, env)
    return asyncio.run(main_async(args, api_key=env.get("DIPROXY_UPSTREAM_API_KEY") or env.get("OPENAI_API_KEY"),
                                  env=env))


if __name__ == "__main__":
    sys.exit(main())
