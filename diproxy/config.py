"""Proxy settings: command-line flags, each defaulting to a DIPROXY_* environment variable, then a built-in value."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from diproxy.protocols import DEFAULT_ENGINE, ENGINES
from diproxy.protocols.base import Option

ENV_PREFIX = "DIPROXY_"


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_host_port(text: str) -> HostPort:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return HostPort(host.strip("[]"), int(port))


def parse_host_ports(text: str) -> tuple[HostPort, ...]:
    """HOST:PORT[,HOST:PORT...]: the members of an etcd cluster."""
    members = tuple(parse_host_port(item) for item in text.split(",") if item.strip())
    if not members:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
    return members


@dataclass(frozen=True)
class Settings:
    mode: str = "di"
    engine: str = DEFAULT_ENGINE
    host: str = "0.0.0.0"
    port: int = 8000
    # The etcd cluster: the member read first, then the others, tried in turn when one is down.
    etcd: HostPort | None = None
    etcd_others: tuple[HostPort, ...] = ()
    etcd_prefix: str = "/workers/"
    # Client TLS to etcd (the cluster's CA; a client certificate where the members require one) and etcd's
    # user/password auth; the password is read from a file so it never shows in a process listing.
    etcd_ca_file: str | None = None
    etcd_cert_file: str | None = None
    etcd_key_file: str | None = None
    etcd_user: str | None = None
    etcd_password_file: str | None = None
    endpoints: tuple[HostPort, ...] = ()
    selection: str = "least-in-flight"
    pair_wait_timeout: float = 10.0
    retry_after: int = 2
    max_retries: int = 1
    connect_timeout: float = 3.0
    first_token_timeout: float = 120.0
    idle_timeout: float = 60.0
    total_timeout: float = 3600.0
    health_interval: float = 2.0
    health_timeout: float = 2.0
    resync_interval: float = 30.0
    etcd_retry_interval: float = 1.0
    api_key_secret: str | None = None
    api_key_file: str | None = None
    aws_region: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    # The model's context (vLLM --max-model-len): bounds max_tokens, token-id prompts and the request body.
    max_model_len: int = 8192
    # Largest accepted body; None: derived from max_model_len (request_body_limit).
    max_request_bytes: int | None = None
    # n/best_of: 1 in di mode (DI_MAX_N_REASON); in standard mode vLLM samples n sequences in one request (the synth
    # sets the model's max_num_seqs: each sequence takes one of an endpoint's places).
    max_n: int = 1
    # Requests in flight in all, and per client (the connection's peer address), answered 429 beyond.
    max_in_flight: int = 256
    max_in_flight_per_client: int = 64
    # Networks a registered worker's address must be in (empty: any IPv4 literal), and how many workers at most.
    worker_networks: tuple[str, ...] = ()
    max_workers: int = 1024
    # Seconds between re-reads of the API key (a rotated key takes effect without a restart; also on SIGHUP).
    api_key_reload_interval: float = 60.0
    log_level: str = "INFO"
    # Cache-aware routing (diproxy/prefix_routing.py, docs/routing.md): blind keeps --selection; approximate and
    # precise choose by cached prefix under bounded load. pd_max_uncached_tokens 0 turns the PD decider off;
    # migration_limit 0 never carries a stream to a new pair (Dynamo's default).
    routing: str = "blind"
    routing_epsilon: float = 0.25
    routing_load_weight: float = 0.0
    routing_block_bytes: int = 256
    routing_capacity: int = 16384
    pd_max_uncached_tokens: int = 0
    pd_max_uncached_ratio: float = 0.7
    migration_limit: int = 0
    tokenizer_file: str | None = None
    # The engine's own options (its protocol's options_type, diproxy/protocols/<engine>), None for an engine without.
    engine_options: Any = None


# Why n (and best_of) is 1 behind a disaggregated proxy: the prefill hop computes one request's KV cache and hands it to
# decode under that request's transfer parameters, while vLLM runs an n > 1 request as n child requests
# (vllm/v1/engine/parallel_sampling.py), each of which would claim the same transfer. That the connectors serve n > 1
# correctly is unverified, so it is refused with this reason rather than risk wrong or failed answers; --max-n raises
# it knowingly.
DI_MAX_N_REASON = (" in a disaggregated deployment (one KV transfer per request, from prefill to decode); "
                   "send n separate requests instead")
STANDARD_MAX_N = 8

# Bytes a request body may spend per token of the model's context, and a fixed allowance for everything else.
# Text: a token is about 4 bytes of English, but JSON-escaped non-Latin text (\uXXXX, 6 bytes per UTF-16 unit, 12 for
# an emoji's surrogate pair) and runs of whitespace (one token for an indentation of 16 spaces) reach 12-16 bytes per
# token; 32 leaves twice that. Token ids: at most 10 digits and ", " (12 bytes; vocabularies below 2**18 need 8).
# Chat: a message's JSON wrapper ({"role": "assistant", "content": ""}, about 40 bytes) also costs the chat template
# several tokens (role header and end marker), so under 10 bytes per token. The allowance covers sampling
# parameters, stop strings, logit_bias and tool definitions. 8192 tokens: 320 KiB; 131072: 4.06 MiB. A batch of
# prompts (request_checks.RequestLimits.max_prompts) shares one model length's worth of bytes: split bigger batches.
BYTES_PER_TOKEN = 32
BODY_ALLOWANCE = 64 * 1024


def request_body_limit(settings: Settings) -> int:
    """The largest body the proxy reads: --max-request-bytes, or derived from max_model_len."""
    if settings.max_request_bytes is not None:
        return settings.max_request_bytes
    return settings.max_model_len * BYTES_PER_TOKEN + BODY_ALLOWANCE


def parse_networks(text: str) -> tuple[str, ...]:
    """CIDR[,CIDR...]: the worker networks, each checked here so a typo fails the start, not every registration."""
    import ipaddress

    try:
        return tuple(str(ipaddress.IPv4Network(item.strip())) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected IPv4 CIDR[,CIDR...], got {text!r}: {exc}") from None


def _env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def _option_dest(engine: str, option: Option) -> str:
    """ENGINE_FIELD: --ENGINE-FIELD on the command line, DIPROXY_ENGINE_FIELD in the environment."""
    return f"{engine.replace('-', '_')}_{option.field}"


def _engine_options(args: argparse.Namespace) -> Any:
    """The selected engine's options object, from its --ENGINE-* values (None when its protocol has none)."""
    protocol = ENGINES[args.engine]
    if protocol.options_type is None:
        return None
    return protocol.options_type(**{opt.field: getattr(args, _option_dest(args.engine, opt)) for opt in protocol.options})


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m diproxy",
        description="Disaggregated-inference proxy: prefill/decode workers found in etcd, spoken to in the protocol "
        "of the engine they run (--engine), or standalone workers in --mode standard. "
        "Every flag can also be set as DIPROXY_<FLAG_NAME> (upper case, '-' as '_').",
    )

    def option(flag: str, dest: str, kind: type, default: object, help_text: str, **extra: object) -> None:
        raw = env.get(_env_name(dest))
        value = kind(raw) if raw not in (None, "") else default
        parser.add_argument(flag, dest=dest, type=kind, default=value, help=f"{help_text} (default: %(default)s)", **extra)

    option("--mode", "mode", str, defaults.mode, "di = prefill/decode pairs from etcd; standard = balance over --endpoint "
           "and/or the {prefix}standard/IP/PORT keys in etcd",
           choices=("di", "standard"))
    engines = "; ".join(f"{name}: {cls.summary}" for name, cls in ENGINES.items())
    option("--engine", "engine", str, defaults.engine, f"KV-transfer engine the workers run, which sets the "
           f"protocol spoken to them in di mode ({engines}); standard mode relays to one worker whatever the engine",
           choices=tuple(ENGINES))
    option("--host", "host", str, defaults.host, "listen address")
    option("--port", "port", int, defaults.port, "listen port")
    option("--etcd", "etcd", parse_host_ports, None, "etcd members HOST:PORT[,HOST:PORT...] (v3 JSON gateway); "
           "required in di mode")
    option("--etcd-ca-file", "etcd_ca_file", str, None, "CA bundle of the etcd members' certificates (speaks HTTPS)")
    option("--etcd-cert-file", "etcd_cert_file", str, None, "client certificate for etcd (PEM)")
    option("--etcd-key-file", "etcd_key_file", str, None, "key of --etcd-cert-file (PEM)")
    option("--etcd-user", "etcd_user", str, None, "etcd user (etcd auth)")
    option("--etcd-password-file", "etcd_password_file", str, None, "file holding --etcd-user's password")
    option("--etcd-prefix", "etcd_prefix", str, defaults.etcd_prefix, "key prefix the workers register under")
    env_endpoints = [parse_host_port(item) for item in env.get(_env_name("endpoints"), "").split(",") if item.strip()]
    parser.add_argument("--endpoint", dest="endpoints", type=parse_host_port, action="append", default=None,
                        help="standalone worker HOST:PORT for standard mode, repeatable "
                        "(env DIPROXY_ENDPOINTS, comma-separated)")
    option("--selection", "selection", str, defaults.selection, "worker selection policy",
           choices=("least-in-flight", "round-robin"))
    option("--pair-wait-timeout", "pair_wait_timeout", float, defaults.pair_wait_timeout,
           "seconds a request waits for a usable worker before 503")
    option("--retry-after", "retry_after", int, defaults.retry_after, "Retry-After seconds sent with 503")
    option("--max-retries", "max_retries", int, defaults.max_retries,
           "extra attempts on another worker when an upstream fails before the client got a byte")
    option("--connect-timeout", "connect_timeout", float, defaults.connect_timeout, "upstream TCP connect timeout, seconds")
    option("--first-token-timeout", "first_token_timeout", float, defaults.first_token_timeout,
           "seconds until the prefill worker's first token (and the decode worker's response headers)")
    option("--idle-timeout", "idle_timeout", float, defaults.idle_timeout, "longest silence between streamed chunks, seconds")
    option("--total-timeout", "total_timeout", float, defaults.total_timeout, "upper bound on one non-streaming upstream call")
    option("--health-interval", "health_interval", float, defaults.health_interval, "seconds between worker /health probes")
    option("--health-timeout", "health_timeout", float, defaults.health_timeout, "timeout of one /health probe")
    option("--resync-interval", "resync_interval", float, defaults.resync_interval,
           "seconds between full etcd re-reads besides the watch")
    option("--etcd-retry-interval", "etcd_retry_interval", float, defaults.etcd_retry_interval,
           "pause before reconnecting to etcd after an error")
    option("--api-key-secret", "api_key_secret", str, None, "Secrets Manager secret holding the client API key")
    option("--api-key-file", "api_key_file", str, None, "file holding the client API key")
    option("--aws-region", "aws_region", str, None, "region of --api-key-secret (default: the instance's)")
    option("--max-model-len", "max_model_len", int, defaults.max_model_len,
           "the model's context in tokens (vLLM --max-model-len): bounds max_tokens, token-id prompts and the body")
    option("--max-request-bytes", "max_request_bytes", int, None, "largest accepted request body (default: "
           f"{BYTES_PER_TOKEN} bytes per token of --max-model-len plus {BODY_ALLOWANCE // 1024} KiB)")
    option("--max-n", "max_n", int, None, f"largest n and best_of (default: 1 in di mode{DI_MAX_N_REASON}; "
           f"{STANDARD_MAX_N} in standard mode)")
    option("--max-in-flight", "max_in_flight", int, defaults.max_in_flight,
           "completion requests in flight at once; more are answered 429 with Retry-After")
    option("--max-in-flight-per-client", "max_in_flight_per_client", int, defaults.max_in_flight_per_client,
           "completion requests in flight per client address; more are answered 429 with Retry-After")
    option("--worker-networks", "worker_networks", parse_networks, (), "IPv4 CIDR[,CIDR...] a registered worker's "
           "address must be in (default: any IPv4 literal)")
    option("--max-workers", "max_workers", int, defaults.max_workers, "registered workers taken at most")
    option("--api-key-reload-interval", "api_key_reload_interval", float, defaults.api_key_reload_interval,
           "seconds between re-reads of the API key (SIGHUP re-reads it at once)")
    option("--log-level", "log_level", str, defaults.log_level, "logging level")
    option("--routing", "routing", str, defaults.routing, "worker choice: blind (--selection), approximate (cached "
           "prefix from the request's text, on every engine) or precise (from the workers' KV events; needs "
           "--tokenizer-file)", choices=("blind", "approximate", "precise"))
    option("--routing-epsilon", "routing_epsilon", float, defaults.routing_epsilon,
           "bounded load: no worker above (1 + epsilon) of its fair share of requests in flight")
    option("--routing-load-weight", "routing_load_weight", float, defaults.routing_load_weight,
           "blocks of cached prefix one request in flight is worth")
    option("--routing-block-bytes", "routing_block_bytes", int, defaults.routing_block_bytes,
           "approximate mode: bytes of prompt text per block")
    option("--routing-capacity", "routing_capacity", int, defaults.routing_capacity,
           "blocks remembered per worker (size it to the worker's KV cache)")
    option("--pd-max-uncached-tokens", "pd_max_uncached_tokens", int, defaults.pd_max_uncached_tokens,
           "PD decider: decode serves alone when the prompt part it lacks is below this many tokens (0: always "
           "prefill first)")
    option("--pd-max-uncached-ratio", "pd_max_uncached_ratio", float, defaults.pd_max_uncached_ratio,
           "PD decider: ... and below this share of the prompt")
    option("--migration-limit", "migration_limit", int, defaults.migration_limit,
           "times a stream whose decode died after the first byte is carried to a new pair (0: never)")
    option("--tokenizer-file", "tokenizer_file", str, None, "precise routing: the model's tokenizer.json")
    for engine, protocol in ENGINES.items():
        if not protocol.options:
            continue
        group = parser.add_argument_group(f"engine {engine}", f"options of engine {engine}'s protocol")
        for opt in protocol.options:
            dest = _option_dest(engine, opt)
            raw = env.get(_env_name(dest))
            group.add_argument("--" + dest.replace("_", "-"), dest=dest, type=opt.kind,
                               default=opt.kind(raw) if raw not in (None, "") else opt.default,
                               help=f"engine {engine}: {opt.help} (default: %(default)s)")
    parser.set_defaults(_env_endpoints=tuple(env_endpoints))
    return parser


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)
    endpoints = tuple(args.endpoints) if args.endpoints else args._env_endpoints
    if args.engine not in ENGINES:  # argparse checks choices for flags only, not for values from the environment
        parser.error(f"unknown engine {args.engine!r} (from {_env_name('engine')}); "
                     f"choose one of: {', '.join(ENGINES)}")
    for engine, protocol in ENGINES.items():
        for opt in protocol.options:
            if not opt.valid(getattr(args, _option_dest(engine, opt))):
                parser.error(f"--{_option_dest(engine, opt).replace('_', '-')} {opt.requirement}")
    if (args.etcd_user is None) != (args.etcd_password_file is None):
        parser.error("--etcd-user and --etcd-password-file go together")
    if args.etcd_cert_file and not args.etcd_ca_file:
        parser.error("--etcd-cert-file needs --etcd-ca-file (a client certificate is only sent over HTTPS)")
    for flag, value, least in (("--max-model-len", args.max_model_len, 1), ("--max-n", args.max_n, 1),
                               ("--max-in-flight", args.max_in_flight, 1),
                               ("--max-in-flight-per-client", args.max_in_flight_per_client, 1),
                               ("--max-workers", args.max_workers, 1),
                               ("--max-request-bytes", args.max_request_bytes, 1024)):
        if value is not None and value < least:
            parser.error(f"{flag} must be at least {least}, got {value}")
    if args.max_n is None:
        args.max_n = 1 if args.mode == "di" else STANDARD_MAX_N
    if args.max_in_flight_per_client > args.max_in_flight:
        parser.error("--max-in-flight-per-client cannot exceed --max-in-flight")
    if args.api_key_reload_interval <= 0:
        parser.error("--api-key-reload-interval must be positive")
    if args.routing_epsilon < 0 or args.routing_load_weight < 0 or args.routing_block_bytes < 16 \
            or args.routing_capacity < 1 or args.pd_max_uncached_tokens < 0 \
            or not 0 <= args.pd_max_uncached_ratio <= 1 or args.migration_limit < 0:
        parser.error("--routing-epsilon, --routing-load-weight, --pd-max-uncached-tokens and --migration-limit must be "
                     ">= 0, --routing-block-bytes >= 16, --routing-capacity >= 1, --pd-max-uncached-ratio within "
                     "[0, 1]")
    if args.mode == "di" and args.etcd is None:
        parser.error("--etcd (or DIPROXY_ETCD) is required in di mode")
    if args.mode == "standard" and not endpoints and args.etcd is None:
        parser.error("standard mode needs at least one --endpoint (or --etcd)")
    upstream_key = env.get(_env_name("upstream_api_key")) or env.get("OPENAI_API_KEY") or None
    engine_values = {_option_dest(engine, opt) for engine, protocol in ENGINES.items() for opt in protocol.options}
    values = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in engine_values}
    values["engine_options"] = _engine_options(args)
    values["endpoints"] = endpoints
    if args.etcd is not None:
        values["etcd"], *others = args.etcd
        values["etcd_others"] = tuple(others)
    prefix = values["etcd_prefix"]
    values["etcd_prefix"] = prefix if prefix.endswith("/") else prefix + "/"
    return Settings(**values, upstream_api_key=upstream_key)
