"""Shipper settings: flags, each defaulting to a DIPROXY_CLOUDWATCH_* variable (the proxy's env file holds them)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

ENV_PREFIX = "DIPROXY_CLOUDWATCH_"
DEFAULT_NAMESPACE = "DiStack/Proxy"


@dataclass(frozen=True)
class ShipperSettings:
    deployment: str
    namespace: str
    metrics_url: str
    interval: float
    state_dir: Path
    region: str | None
    once: bool


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ShipperSettings:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m diproxy.shipper",
        description="Publish the DiStack proxy's /metrics to CloudWatch metrics (histograms as distributions, the "
        f"per-role load as a time average). Every flag can also be set as {ENV_PREFIX}<FLAG_NAME> (upper case, "
        "'-' as '_').")

    def option(flag: str, default: object = None, kind: type = str, help_text: str = "", **extra: object) -> None:
        raw = env.get(ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper())
        value = kind(raw) if raw not in (None, "") else default
        suffix = " (default: %(default)s)" if value is not None else " (required)"
        parser.add_argument(flag, type=kind, default=value, help=help_text + suffix, **extra)

    proxy_port = env.get("DIPROXY_PORT") or "8000"
    option("--deployment", help_text="value of the Deployment dimension on every metric")
    option("--namespace", DEFAULT_NAMESPACE, help_text="CloudWatch metrics namespace")
    option("--metrics-url", f"http://127.0.0.1:{proxy_port}/metrics", help_text="the proxy's Prometheus endpoint")
    option("--interval", 60.0, _positive, "seconds between metric scrapes (one CloudWatch data point each)")
    option("--state-dir", Path(env.get("STATE_DIRECTORY") or "/var/lib/distack-proxy-shipper"), Path,
           "where the metric baseline is kept (systemd sets STATE_DIRECTORY)")
    parser.add_argument("--region", default=env.get("DIPROXY_AWS_REGION") or None,
                        help="AWS region (default: DIPROXY_AWS_REGION, then the SDK's own lookup)")
    parser.add_argument("--once", action="store_true",
                        help="publish one scrape (counted from the last baseline), then exit")
    args = parser.parse_args(argv)
    if not args.deployment:
        parser.error(f"--deployment is required: pass it or set {ENV_PREFIX}DEPLOYMENT "
                     "(the stack writes it to /etc/di/proxy.env)")
    return ShipperSettings(**vars(args))
