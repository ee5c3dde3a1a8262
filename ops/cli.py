"""`dictl`: argument parsing and dispatch only; the work lives in ops.verbs, ops.fleets, ops.preflight, ops.bench.

Exit status: 0 every target succeeded; 1 the operation failed (named on stderr); 2 bad arguments or configuration
(including missing credentials, an unknown --profile, a missing local tool), with the fix; 3 partially applied:
a verb that changes instances (rollout, restart, drain) changed some and failed on, or never reached, others.
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
from ops.progress import Progress
from ops.targets import Selection

# SendCommand's own patterns, checked here so a typo fails before any AWS call:
# https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_SendCommand.html
CONCURRENCY = re.compile(r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$")
ERRORS = re.compile(r"^([1-9][0-9]*|0|[1-9][0-9]%|[0-9]%|100%)$")
ENDPOINT = re.compile(r"^(all|[0-9]{1,2})$")
# registry/repo:tag, optionally pinned to a digest (@sha256:...), as the config's `image` takes it.
IMAGE = re.compile(r"^[a-z0-9.-]+(:\d+)?/[a-z0-9._/-]+:[A-Za-z0-9._-]+(@sha256:[0-9a-f]{64})?$")
MODEL = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROLES = ("prefill", "decode", "control", "colocated", "standard")
ENV_VARIABLE = "DISTACK_ENV"
# Verbs that take --role/--fleet/--instance-id; the others act on fleets (rollout, compile, scale --fleet) or on
# the control host (smoke, bench, tunnel), or on no instance at all.
SELECTING = ("status", "wait-ready", "restart", "logs", "drain")

ClientsFactory = Callable[[str, "str | None"], Any]


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not regex.match(value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a valid {what}")
        return value
    return check


def _size(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be more than 0")
    return number


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be 0 or more")
    return number


class Parser(argparse.ArgumentParser):
    """argparse, with a fix appended when a selection flag is given to a verb that does not select instances."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        if "unrecognized arguments" in message and any(f in message for f in ("--role", "--instance-id")):
            message += (f"\n  fix: --role/--fleet/--instance-id select instances for {', '.join(SELECTING)}; "
                        "rollout and compile take --fleet, scale takes one --fleet, smoke/bench/tunnel run on "
                        "the control host")
        return super().error(message)


class _Version(argparse.Action):
    """`--version`: the installed package's version, read only when asked (keeps `dictl --help` fast)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print dictl's version (the distack package) and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"dictl {package_version()}")
        parser.exit(0)


def package_version() -> str:
    """Version from the installed package metadata (pyproject.toml's project.version)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distack")
    except PackageNotFoundError:
        return "unknown (distack is not installed; pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (no AWS access needed to build or show it)."""
    parser = Parser(prog="dictl", description="Operate a DiStack deployment through SSM Run Command. Exit "
                    "status: 0 ok, 1 failed, 2 usage or configuration, 3 partially applied.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND", parser_class=Parser)

    def command(name: str, help_text: str, *, env: bool = True, json_help: str = "machine-readable output on "
                "stdout", quiet_help: str = "no progress lines on stderr (results and errors still print)"
                ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if env:
            p.add_argument("--env", default=os.environ.get(ENV_VARIABLE) or None,
                           help="environment name: config/NAME.yaml, stack di-NAME "
                                f"(default: ${ENV_VARIABLE}; one of the two is required)")
            p.add_argument("--region", help="AWS region (default: the config's region)")
        p.add_argument("--profile", default=os.environ.get("AWS_PROFILE"),
                       help="AWS profile from ~/.aws/config (default: $AWS_PROFILE, else boto3's default chain)")
        p.add_argument("--json", action="store_true", help=json_help)
        p.add_argument("--quiet", action="store_true", help=quiet_help)
        return p

    def targets(p: argparse.ArgumentParser) -> None:
        p.add_argument("--role", choices=ROLES, help="instances with this di:role (default: every role)")
        p.add_argument("--fleet", help="instances with this di:fleet, a fleet name from the config or control "
                                       "(default: every fleet)")
        p.add_argument("--instance-id", dest="instance_ids", action="append", default=[], metavar="ID",
                       help="one instance, repeat for more; not with --role/--fleet (default: select by tags)")

    def rolling(p: argparse.ArgumentParser, batch: str, errors: str, timeout: int | None, ready: int = 3600,
                timeout_help: str | None = None) -> None:
        # argparse %-formats help text, so a literal percent sign must be doubled.
        shown_batch, shown_errors = batch.replace("%", "%%"), errors.replace("%", "%%")
        p.add_argument("--batch-size", default=batch, type=_pattern(CONCURRENCY, "MaxConcurrency"),
                       help=f"instances at once: a number or a percentage (default: {shown_batch})")
        p.add_argument("--max-errors", default=errors, type=_pattern(ERRORS, "MaxErrors"),
                       help=f"failures before SSM stops sending (default: {shown_errors})")
        if timeout is None:  # health-gated verbs: one wait per instance, one deadline for the whole command
            p.add_argument("--ready-timeout", default=ready, type=_positive,
                           help=f"seconds each instance may take to pass di-ready (default: {ready})")
            p.add_argument("--timeout", default=0, type=_positive,
                           help="seconds for the whole command (default: batches x (ready timeout + the "
                                "document's margin), printed at the start)")
        else:
            p.add_argument("--timeout", default=timeout, type=_positive,
                           help=timeout_help or f"seconds to wait (default: {timeout})")

    p = command("status", "di-status of every selected instance")
    targets(p)
    rolling(p, "50", "100%", 300)
    p = command("wait-ready", "wait until every group is at its desired size and every endpoint answers /health")
    targets(p)
    rolling(p, "50", "100%", 3600)
    p = command("restart", "restart endpoints batch by batch, each gated by di-ready")
    targets(p)
    rolling(p, "1", "0", None)
    p.add_argument("--endpoint", default="all", type=_pattern(ENDPOINT, "endpoint (all or an index)"),
                   help="endpoint index on each instance, or all (default: all)")
    p.add_argument("--clear-kv-lock", action="store_true", help="remove the stale KV store lock file first")
    p = command("rollout", "new image and/or model, fleet after fleet, batch by batch, health-gated")
    p.add_argument("--image", type=_pattern(IMAGE, "image reference (registry/repo:tag)"),
                   help="container image registry/repo:tag (default: unchanged; --image and/or --model required)")
    p.add_argument("--model", type=_pattern(MODEL, "model id (org/name)"),
                   help="Hugging Face model id org/name (default: unchanged)")
    p.add_argument("--parameters-billion", type=_size, metavar="N",
                   help="the new model's size in billions of parameters, as model.parameters_billion, for the "
                        "weights-fit check (default: the file's for the same model; required for a model DiStack "
                        "does not know)")
    p.add_argument("--image-unlisted", action="store_true",
                   help="accept an image the catalog does not list, as image_unlisted: true (default: refused)")
    p.add_argument("--fleet", dest="fleets", action="append", default=[], metavar="FLEET",
                   help="fleets in order, repeatable; control for the proxy (default: every worker fleet in config "
                        "order)")
    rolling(p, "1", "0", None, ready=7200)
    p = command("scale", "change a fleet's desired capacity within its bounds",
                quiet_help="accepted for symmetry; scale prints its result on stdout and no progress")
    p.add_argument("--fleet", required=True, help="worker fleet from the config (required)")
    p.add_argument("--count", required=True, type=_positive,
                   help="desired instances, within the group's min and max (required)")
    p = command("logs", "journal and container logs to s3://BUCKET/logs/ROLE-ID:INSTANCE-ID/<time>/")
    targets(p)
    rolling(p, "50", "100%", 900)
    p.add_argument("--hours", default=6, type=_positive, help="how far back (default: 6)")
    p = command("compile", "compile the model once per TP degree, check what the node staged and promote it to s3://BUCKET/compiled/")
    p.add_argument("--fleet", dest="fleets", action="append", default=[], metavar="FLEET",
                   help="fleets whose TP degrees to compile, repeatable (default: every worker fleet)")
    p.add_argument("--force", action="store_true", help="compile even if the artifacts are in S3")
    rolling(p, "1", "0", 7200)
    p = command("smoke", "one completion through the proxy, from the control host")
    p.add_argument("--max-tokens", default=10, type=_positive, help="tokens to generate (default: 10)")
    rolling(p, "1", "0", 300)
    p = command("canary", "the correctness canary: each prefill->decode pair must answer the decode's own tokens")
    p.add_argument("--max-waiting", default=0, type=int,
                   help="skip a pair whose endpoints have more requests waiting than this (default: 0)")
    rolling(p, "1", "0", 600)
    p = command("bench", "LLMPerf against the proxy from the control host; results to s3://BUCKET/bench/")
    p.add_argument("--run-id", type=_pattern(RUN_ID, "run id ([A-Za-z0-9._-], 1-64)"),
                   help="name of the results folder bench/ROLE-ID:INSTANCE-ID/RUN-ID/ (default: ENV-<UTC time>)")
    p.add_argument("--mean-input-tokens", default=1024, type=_positive, help="mean prompt length (default: 1024)")
    p.add_argument("--stddev-input-tokens", default=0, type=_positive,
                   help="prompt length standard deviation (default: 0)")
    p.add_argument("--mean-output-tokens", default=100, type=_positive,
                   help="mean completion length (default: 100)")
    p.add_argument("--stddev-output-tokens", default=10, type=_positive,
                   help="completion length standard deviation (default: 10)")
    p.add_argument("--concurrency", default=0, type=_positive,
                   help="concurrent requests (default: max_num_seqs x token-producing endpoints)")
    p.add_argument("--max-requests", default=200, type=_positive, help="requests in the run (default: 200)")
    rolling(p, "1", "0", 21600)
    p = command("drain", "stop endpoints so they leave etcd after in-flight requests finish")
    targets(p)
    rolling(p, "1", "0", 0, timeout_help="seconds each instance waits for its in-flight requests before its "
                                         "servers stop (default 0: the config's drain.timeout_seconds, as on "
                                         "scale-in)")
    p.add_argument("--endpoint", default="all", type=_pattern(ENDPOINT, "endpoint (all or an index)"),
                   help="endpoint index on each instance, or all (default: all)")
    p = command("compare", "two LLMPerf summaries side by side (DI vs baseline); refuses different workloads",
                env=False, quiet_help="accepted for symmetry; compare prints nothing on stderr unless it fails")
    p.add_argument("first", help="summary JSON, results directory, or s3:// URI (e.g. the DI run)")
    p.add_argument("second", help="the same for the run to compare with (e.g. the baseline)")
    p.add_argument("--names", nargs=2, default=["DI", "baseline"], metavar=("FIRST", "SECOND"),
                   help="column names (default: DI baseline)")
    p.add_argument("--region", help="region of the bucket for s3:// URIs (default: us-east-1)")
    p.add_argument("--force", action="store_true",
                   help="compare even if the workloads differ (the differences are printed first)")
    p = command("tunnel", "forward a local port to the proxy through Session Manager",
                json_help="print the session (instance, local URL, command) as JSON on stdout, then run it",
                quiet_help="no banner on stderr")
    p.add_argument("--local-port", default=8000, type=_positive, help="port on this machine (default: 8000)")
    p.add_argument("--print", dest="print_only", action="store_true", help="print the command, do not run it")
    p = command("preflight", "AWS-side checks before a deploy: offerings, EFA, reservation, AMI, quotas",
                quiet_help="no summary line on stderr")
    p = command("outputs", "the stack outputs: proxy URL, artifacts bucket, Auto Scaling groups, log groups",
                quiet_help="accepted for symmetry; outputs prints no progress")
    p.add_argument("--key", help="print only this output's value, for shell use (default: every output)")
    p = command("top", "live view per endpoint from CloudWatch: in flight, queued, KV cache, NeuronCore; proxy "
                "TTFT/ITL/5xx", json_help="one snapshot as JSON on stdout, then exit",
                quiet_help="accepted for symmetry; top prints no progress")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit (default: refresh until Ctrl-C)")
    p.add_argument("--interval", default=15, type=_positive,
                   help="seconds between refreshes, 1 or more (default: 15; CloudWatch has one point a minute)")
    command("cost", "cost per hour at on-demand list prices (AWS Price List API), at deploy size and at max_count",
            quiet_help="accepted for symmetry; cost prints no progress")
    p = command("destroy", "after `make destroy`: list what the stack retains on purpose (artifacts bucket, etcd "
                "volume) or left behind (log groups), by tag and log group prefix, and delete it once confirmed; "
                "refuses while the stack exists", json_help="the retained, deleted and failed resources as JSON",
                quiet_help="no progress lines on stderr")
    p.add_argument("--yes", action="store_true",
                   help="delete without asking (default: ask to type the name on a terminal, refuse elsewhere)")
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
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError, ProfileNotFound

        if isinstance(err, ProfileNotFound):
            print(f"dictl {args.verb}: error: {err}\n  fix: {_profiles_hint()}", file=sys.stderr)
            return 2
        if isinstance(err, (NoCredentialsError, NoRegionError)):
            print(f"dictl {args.verb}: error: {err}\n  fix: configure AWS credentials (aws configure, "
                  "AWS_PROFILE or --profile)", file=sys.stderr)
            return 2
        if isinstance(err, (ClientError, BotoCoreError)):
            print(f"dictl {args.verb}: AWS error: {err}", file=sys.stderr)
            return 1
        raise


def _profiles_hint() -> str:
    """The profiles this machine has, and how to make one."""
    try:
        import botocore.session

        known = botocore.session.Session().available_profiles
    except Exception:  # noqa: BLE001 - a broken config file must not hide the real message
        known = []
    have = f"profiles here: {', '.join(sorted(known))}; " if known else "no profiles are configured; "
    return have + "create one with `aws configure --profile NAME` (or `aws configure sso`), or drop --profile"


def dispatch(args: argparse.Namespace, clients_factory: ClientsFactory) -> int:
    """Load the environment, make the clients, run the verb."""
    if args.verb == "compare":
        return _compare(args, clients_factory)
    from ops.targets import Deployment
    from model.loader import ConfigError, load_environment

    if not args.env:
        raise UsageError(f"no environment given\n  fix: pass --env NAME (config/NAME.yaml) or set {ENV_VARIABLE}=NAME")
    try:
        config = load_environment(args.env)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    clients = clients_factory(args.region or config.region, args.profile)
    if args.verb == "cost":
        from ops import cost

        return cost.run(config, cost.pricing_client(clients), as_json=args.json)
    if args.verb == "preflight":
        return _preflight(config, clients, args.json, args.quiet)
    if args.verb == "destroy":
        from ops import teardown

        return teardown.run(config, clients, yes=args.yes, as_json=args.json, quiet=args.quiet)
    deployment = Deployment(config, clients)
    if args.verb == "outputs":
        return _outputs(deployment, args)
    if args.verb == "scale":
        from ops.fleets import scale

        return scale(deployment, args.fleet, args.count, as_json=args.json)
    if args.verb == "top":
        from ops.top import run

        if args.interval < 1:
            raise UsageError("--interval 0 would query CloudWatch without pause\n  fix: --interval 1 or more")
        return run(deployment, once=args.once, as_json=args.json, interval=float(args.interval))
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
                             ready_timeout=args.ready_timeout, timeout=args.timeout, **common)
    if args.verb == "rollout":
        return verbs.rollout(deployment, image=args.image or "", model=args.model or "",
                             fleets=verbs.worker_fleets(deployment, args.fleets), ready_timeout=args.ready_timeout,
                             timeout=args.timeout, parameters_billion=args.parameters_billion,
                             image_unlisted=args.image_unlisted, **common)
    if args.verb == "logs":
        return verbs.logs(deployment, selection, hours=args.hours, **common)
    if args.verb == "compile":
        return verbs.compile_model(deployment, verbs.worker_fleets(deployment, args.fleets, allow_control=False),
                                   force=args.force,
                                   timeout=args.timeout, **common)
    if args.verb == "smoke":
        return verbs.smoke(deployment, max_tokens=args.max_tokens, **common)
    if args.verb == "canary":
        from ops.canary import canary
        return canary(deployment, max_waiting=args.max_waiting, **common)
    if args.verb == "bench":
        workload = {"meanInputTokens": args.mean_input_tokens, "stddevInputTokens": args.stddev_input_tokens,
                    "meanOutputTokens": args.mean_output_tokens, "stddevOutputTokens": args.stddev_output_tokens,
                    "concurrency": args.concurrency or verbs.default_concurrency(deployment),
                    "maxRequests": args.max_requests}
        return verbs.bench(deployment, run_id=args.run_id or "", workload=workload, timeout=args.timeout, **common)
    if args.verb == "drain":
        return verbs.drain(deployment, selection, endpoint=args.endpoint,
                           timeout=args.timeout or deployment.config.drain.timeout_seconds, **common)
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
    differences = bench.workload_differences(first, second)
    if differences and not args.force:
        raise UsageError("the two runs had different workloads, so their numbers do not compare:\n"
                         + bench.render_differences(differences, *args.names)
                         + "\n  fix: bench both with the same --mean/--stddev-input/output-tokens, --concurrency "
                           "and model, or pass --force to compare anyway")
    if args.json:
        print(json.dumps({"first": args.names[0], "second": args.names[1],
                          "workload_differences": differences, "metrics": rows}, indent=2))
    else:
        if differences:
            print("WORKLOADS DIFFER (--force): the changes below mix workload and deployment effects\n"
                  + bench.render_differences(differences, *args.names) + "\n")
        print(bench.render(rows, *args.names))
    return 0


def _preflight(config: Any, clients: Any, as_json: bool, quiet: bool) -> int:
    from ops.preflight import CREDENTIALS, ERROR, Preflight, as_dicts, render

    preflight = Preflight(config, clients)
    findings = preflight.run()
    print(json.dumps(as_dicts(findings), indent=2) if as_json else render(findings))
    if preflight.blocked:
        reason = "no usable AWS credentials" if preflight.blocked == CREDENTIALS else "AWS could not be reached"
        print(f"preflight: could not run: {reason}; nothing was checked", file=sys.stderr)
        return 2 if preflight.blocked == CREDENTIALS else 1
    errors = [f for f in findings if f.level == ERROR]
    if errors:
        if not quiet:
            print(f"preflight: {len(errors)} error(s); fix them before `make deploy ENV={config.name}`",
                  file=sys.stderr)
        return 1
    return 0


def _outputs(deployment: Any, args: argparse.Namespace) -> int:
    from ops.output import table
    from model import naming

    outputs = deployment.outputs
    if args.key:
        if args.key not in outputs:
            raise UsageError(f"stack {naming.stack_name(deployment.name)} has no output {args.key}\n"
                             f"  fix: use one of {', '.join(sorted(outputs))}")
        print(outputs[args.key])
        return 0
    if args.json:
        print(json.dumps({"stack": naming.stack_name(deployment.name), "region": deployment.clients.region,
                          "outputs": outputs}, indent=2))
        return 0
    print(table(("OUTPUT", "VALUE"), sorted(outputs.items())))
    return 0


def _tunnel(deployment: Any, args: argparse.Namespace) -> int:
    from ops import tunnel

    instance = tunnel.control_instance(deployment)
    argv = tunnel.command(instance, region=deployment.clients.region, local_port=args.local_port,
                          profile=args.profile)
    url = f"http://localhost:{args.local_port}/v1"
    if args.json:
        print(json.dumps({"instance_id": instance, "local_url": url, "command": argv,
                          "shell": tunnel.shell_line(argv), "runs": not args.print_only}, indent=2), flush=True)
    elif args.print_only:
        print(tunnel.shell_line(argv))
    elif not args.quiet:
        print(tunnel.shell_line(argv), file=sys.stderr)
    if args.print_only:
        return 0
    tunnel.check_tools()
    if not args.quiet:
        print(f"proxy at {url} while this runs (Ctrl-C ends it)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        tunnel.check_tools()  # names the tool with its install page
        raise
    return 0  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main())
