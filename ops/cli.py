"""`dictl`: argument parsing and dispatch only; the work lives in ops.verbs, ops.fleets, ops.preflight, ops.bench.

Exit status: 0 every target succeeded, 1 something failed (named on stderr), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Callable, Sequence

from ops import verbs
from ops.errors import UsageError
from ops.output import Progress
from ops.targets import Selection

# SendCommand's own patterns, checked here so a typo fails before any AWS call:
# https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_SendCommand.html
CONCURRENCY = re.compile(r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$")
ERRORS = re.compile(r"^([1-9][0-9]*|0|[1-9][0-9]%|[0-9]%|100%)$")
ENDPOINT = re.compile(r"^(all|[0-9]{1,2})$")
IMAGE = re.compile(r"^[a-z0-9.-]+(:\d+)?/[a-z0-9._/-]+:[A-Za-z0-9._-]+$")
MODEL = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROLES = ("prefill", "decode", "control", "colocated", "standard")

ClientsFactory = Callable[[str, "str | None"], Any]


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not regex.match(value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a valid {what}")
        return value
    return check


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be 0 or more")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (no AWS access needed to build or show it)."""
    parser = argparse.ArgumentParser(prog="dictl", description="Operate a DiStack deployment through SSM Run Command.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, env: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if env:
            p.add_argument("--env", required=True, help="environment name (config/NAME.yaml, stack di-NAME)")
            p.add_argument("--region", help="override the config's region")
            p.add_argument("--profile", default=os.environ.get("AWS_PROFILE"), help="AWS profile")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
        return p

    def targets(p: argparse.ArgumentParser) -> None:
        p.add_argument("--role", choices=ROLES, help="instances with this di:role")
        p.add_argument("--fleet", help="instances with this di:fleet (a fleet name from the config, or control)")
        p.add_argument("--instance-id", dest="instance_ids", action="append", default=[], metavar="ID",
                       help="one instance (repeat for more)")

    def rolling(p: argparse.ArgumentParser, batch: str, errors: str, timeout: int) -> None:
        # argparse %-formats help text, so a literal percent sign must be doubled.
        shown_batch, shown_errors = batch.replace("%", "%%"), errors.replace("%", "%%")
        p.add_argument("--batch-size", default=batch, type=_pattern(CONCURRENCY, "MaxConcurrency"),
                       help=f"instances at once: a number or a percentage (default {shown_batch})")
        p.add_argument("--max-errors", default=errors, type=_pattern(ERRORS, "MaxErrors"),
                       help=f"failures before SSM stops sending (default {shown_errors})")
        p.add_argument("--timeout", default=timeout, type=_positive, help=f"seconds to wait (default {timeout})")

    p = command("status", "di-status of every selected instance")
    targets(p)
    rolling(p, "50", "100%", 300)
    p = command("wait-ready", "wait until every group is at its desired size and every endpoint answers /health")
    targets(p)
    rolling(p, "50", "100%", 3600)
    p = command("restart", "restart endpoints batch by batch, each gated by di-ready")
    targets(p)
    rolling(p, "1", "0", 3600)
    p.add_argument("--endpoint", default="all", type=_pattern(ENDPOINT, "endpoint (all or an index)"))
    p.add_argument("--clear-kv-lock", action="store_true", help="remove the stale KV store lock file first")
    p = command("rollout", "new image and/or model, fleet after fleet, batch by batch, health-gated")
    p.add_argument("--image", type=_pattern(IMAGE, "image reference (registry/repo:tag)"))
    p.add_argument("--model", type=_pattern(MODEL, "model id (org/name)"))
    p.add_argument("--fleet", dest="fleets", action="append", default=[], metavar="FLEET",
                   help="fleets in order (default: every worker fleet in config order); `control` for the proxy")
    rolling(p, "1", "0", 7200)
    p = command("scale", "change a fleet's desired capacity within its bounds")
    p.add_argument("--fleet", required=True)
    p.add_argument("--count", required=True, type=_positive)
    p = command("logs", "journal and container logs to s3://BUCKET/logs/<instance>/<time>/")
    targets(p)
    rolling(p, "50", "100%", 900)
    p.add_argument("--hours", default=6, type=_positive, help="how far back (default 6)")
    p = command("compile", "compile the model once per TP degree and upload to s3://BUCKET/compiled/")
    p.add_argument("--fleet", dest="fleets", action="append", default=[], metavar="FLEET")
    p.add_argument("--force", action="store_true", help="compile even if the artifacts are in S3")
    rolling(p, "1", "0", 7200)
    p = command("smoke", "one completion through the proxy, from the control host")
    p.add_argument("--max-tokens", default=10, type=_positive)
    rolling(p, "1", "0", 300)
    p = command("bench", "LLMPerf against the proxy from the control host; results to s3://BUCKET/bench/")
    p.add_argument("--run-id", type=_pattern(RUN_ID, "run id ([A-Za-z0-9._-], 1-64)"))
    p.add_argument("--mean-input-tokens", default=1024, type=_positive)
    p.add_argument("--stddev-input-tokens", default=0, type=_positive)
    p.add_argument("--mean-output-tokens", default=100, type=_positive)
    p.add_argument("--stddev-output-tokens", default=10, type=_positive)
    p.add_argument("--concurrency", default=0, type=_positive, help="default: max_num_seqs x token-producing endpoints")
    p.add_argument("--max-requests", default=200, type=_positive)
    rolling(p, "1", "0", 21600)
    p = command("drain", "stop endpoints so they leave etcd after in-flight requests finish")
    targets(p)
    rolling(p, "1", "0", 900)
    p.add_argument("--endpoint", default="all", type=_pattern(ENDPOINT, "endpoint (all or an index)"))
    p = command("compare", "two LLMPerf summaries side by side (DI vs baseline)", env=False)
    p.add_argument("first", help="summary JSON, results directory, or s3:// URI (e.g. the DI run)")
    p.add_argument("second", help="the same for the run to compare with (e.g. the baseline)")
    p.add_argument("--names", nargs=2, default=["DI", "baseline"], metavar=("FIRST", "SECOND"))
    p.add_argument("--region", help="region of the bucket for s3:// URIs")
    p.add_argument("--profile", default=os.environ.get("AWS_PROFILE"))
    p = command("tunnel", "forward a local port to the proxy through Session Manager")
    p.add_argument("--local-port", default=8000, type=_positive)
    p.add_argument("--print", dest="print_only", action="store_true", help="print the command, do not run it")
    p = command("preflight", "AWS-side checks before a deploy: offerings, EFA, reservation, AMI, quotas")
    return parser


def default_clients(region: str, profile: str | None) -> Any:
    """Real clients from a boto3 session (imported here so `dictl --help` stays fast)."""
    import boto3

    from ops.aws import Clients

    return Clients(boto3.Session(region_name=region, profile_name=profile))


def main(argv: Sequence[str] | None = None, *, clients_factory: ClientsFactory | None = None) -> int:
    """Run one dictl command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return dispatch(args, clients_factory or default_clients)
    except UsageError as err:
        print(f"dictl {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dictl {args.verb}: interrupted; commands already sent keep running in SSM", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - AWS failures end with one clear line, not a traceback
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

        if isinstance(err, (NoCredentialsError, NoRegionError)):
            print(f"dictl {args.verb}: error: {err}\n  fix: configure AWS credentials (aws configure, "
                  "AWS_PROFILE or --profile)", file=sys.stderr)
            return 2
        if isinstance(err, (ClientError, BotoCoreError)):
            print(f"dictl {args.verb}: AWS error: {err}", file=sys.stderr)
            return 1
        raise


def dispatch(args: argparse.Namespace, clients_factory: ClientsFactory) -> int:
    """Load the environment, make the clients, run the verb."""
    if args.verb == "compare":
        return _compare(args, clients_factory)
    from ops.targets import Deployment
    from stacks.loader import ConfigError, load_environment

    try:
        config = load_environment(args.env)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    clients = clients_factory(args.region or config.region, args.profile)
    if args.verb == "preflight":
        return _preflight(config, clients, args.json)
    deployment = Deployment(config, clients)
    if args.verb == "scale":
        from ops.fleets import scale

        return scale(deployment, args.fleet, args.count)
    if args.verb == "tunnel":
        return _tunnel(deployment, args)
    return _run_verb(deployment, args)


def _run_verb(deployment: Any, args: argparse.Namespace) -> int:
    from ops.commands import SendOptions

    progress = Progress(quiet=args.quiet)
    options = SendOptions(concurrency=args.batch_size, max_errors=args.max_errors, timeout=float(args.timeout),
                          comment=f"dictl {args.verb}")
    common = {"options": options, "progress": progress, "as_json": args.json}
    selection = None
    if hasattr(args, "instance_ids"):
        selection = deployment.validate(Selection(role=args.role, fleet=args.fleet,
                                                  instance_ids=tuple(args.instance_ids)))
    if args.verb == "status":
        return verbs.status(deployment, selection, **common)
    if args.verb == "wait-ready":
        return verbs.wait_ready(deployment, selection, timeout=float(args.timeout), **common)
    if args.verb == "restart":
        return verbs.restart(deployment, selection, endpoint=args.endpoint, clear_kv_lock=args.clear_kv_lock,
                             ready_timeout=args.timeout, **common)
    if args.verb == "rollout":
        return verbs.rollout(deployment, image=args.image or "", model=args.model or "",
                             fleets=verbs.worker_fleets(deployment, args.fleets), ready_timeout=args.timeout,
                             **common)
    if args.verb == "logs":
        return verbs.logs(deployment, selection, hours=args.hours, **common)
    if args.verb == "compile":
        return verbs.compile_model(deployment, verbs.worker_fleets(deployment, args.fleets, allow_control=False),
                                   force=args.force,
                                   timeout=args.timeout, **common)
    if args.verb == "smoke":
        return verbs.smoke(deployment, max_tokens=args.max_tokens, **common)
    if args.verb == "bench":
        workload = {"meanInputTokens": args.mean_input_tokens, "stddevInputTokens": args.stddev_input_tokens,
                    "meanOutputTokens": args.mean_output_tokens, "stddevOutputTokens": args.stddev_output_tokens,
                    "concurrency": args.concurrency or verbs.default_concurrency(deployment),
                    "maxRequests": args.max_requests}
        return verbs.bench(deployment, run_id=args.run_id or "", workload=workload, timeout=args.timeout, **common)
    if args.verb == "drain":
        return verbs.drain(deployment, selection, endpoint=args.endpoint, timeout=args.timeout, **common)
    raise UsageError(f"unknown command {args.verb}")


def _compare(args: argparse.Namespace, clients_factory: ClientsFactory) -> int:
    from ops import bench

    made: list[Any] = []

    def s3() -> Any:
        if not made:
            made.append(clients_factory(args.region or "us-east-1", args.profile))
        return made[0].s3

    first, second = bench.load_summary(args.first, s3), bench.load_summary(args.second, s3)
    rows = bench.compare(first, second)
    if not rows:
        raise UsageError("neither file holds LLMPerf summary metrics (results_ttft_s_mean, ...)\n"
                         "  fix: pass the *_summary.json files LLMPerf wrote")
    if args.json:
        print(json.dumps({"first": args.names[0], "second": args.names[1], "metrics": rows}, indent=2))
    else:
        print(bench.render(rows, *args.names))
    return 0


def _preflight(config: Any, clients: Any, as_json: bool) -> int:
    from ops.preflight import ERROR, Preflight, as_dicts, render

    findings = Preflight(config, clients).run()
    print(json.dumps(as_dicts(findings), indent=2) if as_json else render(findings))
    errors = [f for f in findings if f.level == ERROR]
    if errors:
        print(f"preflight: {len(errors)} error(s); fix them before `make deploy ENV={config.name}`", file=sys.stderr)
        return 1
    return 0


def _tunnel(deployment: Any, args: argparse.Namespace) -> int:
    from ops import tunnel

    argv = tunnel.command(tunnel.control_instance(deployment), region=deployment.clients.region,
                          local_port=args.local_port, profile=args.profile)
    print(tunnel.shell_line(argv), file=sys.stdout if args.print_only else sys.stderr)
    if args.print_only:
        return 0
    print(f"proxy at http://localhost:{args.local_port}/v1 while this runs (Ctrl-C ends it)", file=sys.stderr)
    os.execvp(argv[0], argv)
    return 0  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main())
