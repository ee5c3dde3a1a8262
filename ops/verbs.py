"""The Run Command verbs of `dictl`: each picks targets and knobs, runs one document and prints the result."""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable, TextIO

from botocore.exceptions import ClientError

from ops import commands, promote, written
from ops.commands import InstanceResult, RunResult, SendOptions
from ops.errors import UsageError
from ops.output import Progress, print_run
from ops.targets import Deployment, Selection
from model import naming

def status_summary(result: InstanceResult) -> str:
    """One line from di-status JSON: endpoints answering /health and registered in etcd, units, image tag."""
    try:
        data = json.loads(result.output)
    except (TypeError, ValueError):
        return ""
    if not isinstance(data, dict):
        return ""
    parts = []
    endpoints = [e for e in data.get("endpoints", []) if isinstance(e, dict)]
    if endpoints:
        healthy = sum(1 for e in endpoints if str(e.get("health")) == "200")
        parts.append(f"health {healthy}/{len(endpoints)}")
        registered = [e for e in endpoints if e.get("registered") is not None]
        if registered:
            parts.append(f"etcd {sum(1 for e in registered if e['registered'])}/{len(registered)}")
    if "etcd_healthy" in data:
        parts.append("etcd healthy" if data["etcd_healthy"] else "etcd DOWN")
    units = [u for u in data.get("units", []) if isinstance(u, dict)]
    if units:
        parts.append(f"units {sum(1 for u in units if u.get('state') == 'active')}/{len(units)} active")
    image = str(data.get("image", ""))
    if image:
        parts.append(f"image {image.rsplit(':', 1)[-1]}")
    return ", ".join(parts)


def status(deployment: Deployment, selection: Selection, *, options: SendOptions, progress: Progress,
           as_json: bool, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Each fleet's group (desired / in service / warm, what sizes it) and the dashboard URL, then di-status on
    every selected instance, all at once (read-only, so no failure stops it)."""
    from ops.fleets import group_rows, render_groups

    out, err = out or sys.stdout, err or sys.stderr
    try:
        rows = group_rows(deployment)
    except ClientError as error:  # the instances can still be shown; say what is missing
        print(f"status: could not read the fleets' Auto Scaling groups: {error}", file=err)
        rows = []
    dashboard = deployment.outputs.get(naming.OUTPUT_DASHBOARD_URL, "")
    options = replace(options, max_errors="100%")
    run = commands.run(deployment, "status", selection, options=options, progress=progress)
    if as_json:
        shown = io.StringIO()
        code = print_run(run, as_json=True, summarize=status_summary, out=shown, err=err)
        print(json.dumps({**json.loads(shown.getvalue()), "fleets": rows, "dashboard": dashboard}, indent=2), file=out)
        return code
    if rows:
        print(render_groups(rows) + "\n", file=out)
    if dashboard:
        print(f"dashboard: {dashboard}\n", file=out)
    return print_run(run, as_json=False, summarize=status_summary, out=out, err=err)


# Seconds an instance may take beyond its readiness wait: the Update document pulls and stages the image first,
# Restart only stops and starts units. The same margins are the documents' executionTimeout.
RESTART_MARGIN = 300
ROLLOUT_MARGIN = 1800


def batch_count(instances: int, batch_size: str) -> int:
    """How many batches SSM needs for `instances` targets at MaxConcurrency `batch_size` (a number or N%)."""
    if instances <= 0:
        return 0
    if batch_size.endswith("%"):
        per_batch = max(1, instances * int(batch_size[:-1]) // 100)
    else:
        per_batch = max(1, int(batch_size))
    return -(-instances // per_batch)


def _deadline_note(verb: str, batches: int, instances: int, ready_timeout: int, margin: int, timeout: int,
                   progress: Progress, err: TextIO) -> int:
    """The whole command's deadline: `timeout` if given, else batches x (ready timeout + margin); printed."""
    per_batch = ready_timeout + margin
    whole = timeout or batches * per_batch
    if not progress.quiet:
        how = "--timeout" if timeout else (f"{batches} batch(es) x ({ready_timeout} s ready + {margin} s), "
                                           "change with --timeout")
        print(f"{verb}: {instances} instance(s) in {batches} batch(es); each must be ready within "
              f"{ready_timeout} s (--ready-timeout); the whole command stops after {whole} s ({how})", file=err)
    return whole


def restart(deployment: Deployment, selection: Selection, *, endpoint: str, clear_kv_lock: bool,
            ready_timeout: int, timeout: int = 0, options: SendOptions, progress: Progress, as_json: bool,
            out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Restart endpoints batch by batch; each instance must pass di-ready before the next batch starts.

    `ready_timeout` bounds each instance, `timeout` (0: batches x per-instance limit) the whole command.
    """
    err = err or sys.stderr
    parameters = {"endpoint": endpoint, "flags": "--clear-kv-lock" if clear_kv_lock else "",
                  "readyTimeout": str(ready_timeout), "executionTimeout": str(ready_timeout + RESTART_MARGIN)}
    _ = deployment.bucket  # first, so a missing stack is reported before anything else
    expected = deployment.instances(selection)
    whole = _deadline_note("restart", batch_count(len(expected), options.concurrency), len(expected),
                           ready_timeout, RESTART_MARGIN, timeout, progress, err)
    run = commands.run(deployment, "restart", selection, parameters=parameters,
                       options=replace(options, timeout=float(whole)), progress=progress, expected=expected)
    return print_run(run, as_json=as_json, out=out, err=err, changes=True)


def rollout(deployment: Deployment, *, image: str, model: str, fleets: list[str], ready_timeout: int,
            timeout: int = 0, options: SendOptions, progress: Progress, as_json: bool, out: TextIO | None = None,
            err: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
            parameters_billion: float | None = None, image_unlisted: bool = False) -> int:
    """Update fleet after fleet (batches of `concurrency`, health-gated); the first failing fleet stops it.

    First the config rules run on the config as changed (`check_rollout`); a problem ends it with exit 2 before
    any AWS call. `ready_timeout` bounds each instance; `timeout` (0: all fleets' batches x per-instance limit) the
    whole command. Exit 3 when some instances were updated and others failed or were not reached.
    """
    err = err or sys.stderr
    if not image and not model:
        raise UsageError("rollout needs --image and/or --model\n  fix: e.g. dictl rollout --env "
                         f"{deployment.name} --image public.ecr.aws/neuron/...:TAG")
    check_rollout(deployment, image=image, model=model, parameters_billion=parameters_billion,
                  image_unlisted=image_unlisted)
    parameters = {"image": image, "model": model, "readyTimeout": str(ready_timeout),
                  "executionTimeout": str(ready_timeout + ROLLOUT_MARGIN)}
    _ = deployment.bucket  # first, so a missing stack is reported before anything else
    members = {fleet: deployment.instances(Selection(fleet=fleet)) for fleet in fleets}
    batches = sum(batch_count(len(found), options.concurrency) for found in members.values())
    whole = _deadline_note("rollout", batches, sum(len(f) for f in members.values()), ready_timeout,
                           ROLLOUT_MARGIN, timeout, progress, err)
    deadline = clock() + whole
    total = RunResult(deployment.document("update"))
    not_updated: list[str] = []
    for index, fleet in enumerate(fleets):
        if not members[fleet]:
            print(f"rollout: fleet {fleet} has no instances; skipped", file=err)
            continue
        remaining = deadline - clock()
        if remaining <= 0:
            not_updated = fleets[index:]
            print(f"rollout stopped: the whole-command timeout ({whole} s) passed before fleet {fleet}; "
                  f"not updated: {', '.join(not_updated)}", file=err)
            break
        progress.update(f"rollout: fleet {fleet} ({index + 1}/{len(fleets)})")
        run = commands.run(deployment, "update", Selection(fleet=fleet), parameters=parameters,
                           options=replace(options, timeout=remaining), progress=progress, expected=members[fleet])
        total.extend(run)
        if not run.ok:
            not_updated = fleets[index + 1:]
            print(f"rollout stopped at fleet {fleet}; not updated: {', '.join(not_updated) or 'none'}", file=err)
            break
    status_code = print_run(total, as_json=as_json, out=out, err=err, changes=True)
    if status_code == 0 and not_updated:
        status_code = 3 if total.results else 1
    if status_code == 0:
        keep = [f"image: {image}" if image else "", f"model.id: {model}" if model else ""]
        print(f"to keep this across the next deploy, set in config/{deployment.name}.yaml: "
              + "; ".join(k for k in keep if k), file=err)
    return status_code


def check_rollout(deployment: Deployment, *, image: str, model: str, parameters_billion: float | None = None,
                  image_unlisted: bool = False) -> None:
    """The config rules on the config as the rollout changes it, which is also what the next deploy sees once the
    printed keys are set in the file. A new model drops the file's model.parameters_billion: it gave the old
    model's size."""
    from model.loader import REMOVE, ConfigError, load_environment

    changes: dict[str, tuple[object, str]] = {}
    if image:
        changes["image"] = (image, "--image")
    if image_unlisted:
        changes["image_unlisted"] = (True, "--image-unlisted")
    if model:
        changes["model.id"] = (model, "--model")
        if model != deployment.config.model.id and parameters_billion is None:
            changes["model.parameters_billion"] = (REMOVE, "--model")
    if parameters_billion is not None:
        changes["model.parameters_billion"] = (parameters_billion, "--parameters-billion")
    try:
        load_environment(deployment.name, changes=changes)  # warnings (an unlisted image taken) go to stderr
    except ConfigError as problem:
        raise UsageError(f"{problem}\n  nothing was sent: fix the flags or the file, then run the rollout again") from None


def wait_ready(deployment: Deployment, selection: Selection, *, timeout: float, options: SendOptions,
               progress: Progress, as_json: bool, out: TextIO | None = None,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    """First every Auto Scaling group in service at its desired size, then di-ready on every instance."""
    deadline = clock() + timeout
    groups = _groups(deployment, selection)
    while groups:
        pending = _groups_short(deployment, groups)
        if not pending:
            break
        progress.update("waiting for instances: " + ", ".join(pending))
        if clock() >= deadline:
            print("timed out waiting for instances: " + ", ".join(pending), file=sys.stderr)
            return 1
        sleep(options.poll_seconds)
    remaining = max(int(deadline - clock()), 0)
    parameters = {"timeout": str(remaining), "executionTimeout": str(remaining + 120)}
    options = replace(options, max_errors="100%", timeout=remaining + 180.0)
    run = commands.run(deployment, "ready", selection, parameters=parameters, options=options, progress=progress)
    return print_run(run, as_json=as_json, out=out)


def _groups(deployment: Deployment, selection: Selection) -> dict[str, str]:
    if selection.instance_ids:
        return {}
    fleets = [f for f, c in deployment.config.fleets.items()
              if (not selection.fleet or selection.fleet == f) and (not selection.role or selection.role == c.role)]
    if (not selection.fleet and not selection.role) or naming.ROLE_CONTROL in (selection.fleet, selection.role):
        fleets.append(naming.ROLE_CONTROL)
    return {deployment.fleet_group(f): f for f in fleets}


def _groups_short(deployment: Deployment, groups: dict[str, str]) -> list[str]:
    """Fleets whose group has fewer healthy in-service instances than desired (one call for all groups)."""
    response = deployment.clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=list(groups))
    short = []
    for group in response.get("AutoScalingGroups", []):
        in_service = sum(1 for i in group.get("Instances", [])
                         if i.get("LifecycleState") == "InService" and i.get("HealthStatus") == "Healthy")
        if in_service < group["DesiredCapacity"]:
            short.append(f"{groups[group['AutoScalingGroupName']]} {in_service}/{group['DesiredCapacity']}")
    return short


def logs(deployment: Deployment, selection: Selection, *, hours: int, options: SendOptions, progress: Progress,
         as_json: bool, out: TextIO | None = None) -> int:
    """Journal and container logs of each instance to s3://BUCKET/logs/ROLE-ID:INSTANCE-ID/<time>/."""
    options = replace(options, max_errors="100%")
    run = commands.run(deployment, "collect-logs", selection, parameters={"hours": str(hours)},
                       options=options, progress=progress)
    code = print_run(run, as_json=as_json, out=out)
    return code or _report_uploads(deployment, run, naming.BUCKET_PREFIX_LOGS, "logs", sys.stderr)


def _report_uploads(deployment: Deployment, run: RunResult, prefix: str, what: str, err: TextIO) -> int:
    """Each instance's upload with the instance that wrote it; 1 if one is not in the instance's own folder."""
    refused = 0
    for upload in written.uploads(run, deployment.bucket, prefix, deployment.node_role_ids):
        if upload.problem:
            refused = 1
            print(f"dictl: {upload.instance_id} reported {upload.uri}, {upload.problem}: not taken as its {what}",
                  file=err)
        else:
            print(f"{what} of {upload.instance_id}: {upload.uri}", file=err)
    return refused


def compile_model(deployment: Deployment, fleets: list[str], *, force: bool, timeout: int, options: SendOptions,
                  progress: Progress, as_json: bool, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Compile once per distinct tensor-parallel degree, on one live instance of the first fleet using it, then
    promote what each instance staged (ops/promote.py): nodes cannot write compiled/ themselves."""
    err = err or sys.stderr
    chosen: dict[int, str] = {}
    for fleet in fleets:
        chosen.setdefault(deployment.config.fleets[fleet].tensor_parallel, fleet)
    total = RunResult(deployment.document("compile"))
    refused = 0
    parameters = {"flags": "--force" if force else "", "executionTimeout": str(timeout)}
    for fleet in chosen.values():
        live = [i for i in deployment.instances(Selection(fleet=fleet)) if i.state == "running"]
        if not live:
            raise UsageError(f"fleet {fleet} has no running instance to compile on\n"
                             f"  fix: dictl scale --env {deployment.name} --fleet {fleet} --count 1")
        selection = Selection(instance_ids=(live[0].instance_id,))
        run = commands.run(deployment, "compile", selection, parameters=parameters,
                           options=replace(options, timeout=float(timeout) + 120), progress=progress,
                           expected=live[:1])
        total.extend(run)
        if run.ok:
            refused += _promote(deployment, live[0].instance_id, progress, err)
    status = print_run(total, as_json=as_json, out=out)
    return status or (1 if refused else 0)


def _promote(deployment: Deployment, instance_id: str, progress: Progress, err: TextIO) -> int:
    """Promote what INSTANCE_ID staged in its own folder, if anything (nothing when the artifacts were already in
    S3); 1 if refused. Another instance's folder is never taken for this one's (ops/promote.py)."""
    s3, bucket = deployment.clients.s3, deployment.bucket
    sets, refused = promote.staged_sets(s3, bucket, deployment.node_role_ids)
    for folder in refused:
        print(f"dictl compile: ignored s3://{bucket}/{naming.BUCKET_PREFIX_STAGING_COMPILED}{folder}/: not "
              "ROLE-ID:INSTANCE-ID under one of the stack's node roles (an older layout, or not written by a node)",
              file=err)
    staged = promote.pick(sets, instance_id)
    if staged is None:
        return 0
    progress.update(f"checking and promoting {staged.key} staged by {instance_id}")
    try:
        done = promote.promote(s3, bucket, staged)
    except promote.PromoteError as error:
        print(f"dictl compile: not promoted, s3://{bucket}/{naming.BUCKET_PREFIX_COMPILED}{staged.key}/ left as it "
              f"was:\n{error}\n  fix: dictl compile --env {deployment.name} --force (compile and stage again)",
              file=err)
        return 1
    print(f"promoted {done.files} file(s) staged by {instance_id} to "
          f"s3://{bucket}/{naming.BUCKET_PREFIX_COMPILED}{staged.key}/"
          + (f", {done.removed} stale removed" if done.removed else ""), file=err)
    return 0


def smoke(deployment: Deployment, *, max_tokens: int, options: SendOptions, progress: Progress, as_json: bool,
          out: TextIO | None = None) -> int:
    """The tutorial's completion request through the proxy, sent from the control host."""
    run = commands.run(deployment, "smoke", Selection(role=naming.ROLE_CONTROL),
                       parameters={"maxTokens": str(max_tokens)}, options=options, progress=progress)
    return print_run(run, as_json=as_json, out=out)


def default_concurrency(deployment: Deployment) -> int:
    """As in the data-parallel tutorial: batch size times the number of endpoints that produce tokens."""
    producers = sum(1 for fleet in deployment.config.fleets.values() for ep in fleet.resolved_endpoints
                    for _ in range(fleet.count) if ep.role in (naming.ROLE_DECODE, naming.ROLE_STANDARD))
    return max(deployment.config.model.max_num_seqs * max(producers, 1), 1)


def bench(deployment: Deployment, *, run_id: str, workload: dict[str, int], timeout: int, options: SendOptions,
          progress: Progress, as_json: bool, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """LLMPerf on the control host against the proxy; results to s3://BUCKET/bench/ROLE-ID:INSTANCE-ID/<run-id>/."""
    run_id = run_id or f"{deployment.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    parameters = {"runId": run_id, **{k: str(v) for k, v in workload.items()}, "executionTimeout": str(timeout)}
    run = commands.run(deployment, "bench", Selection(role=naming.ROLE_CONTROL), parameters=parameters,
                       options=replace(options, timeout=float(timeout) + 120), progress=progress)
    code = print_run(run, as_json=as_json, out=out, err=err)
    return code or _report_uploads(deployment, run, naming.BUCKET_PREFIX_BENCH, "results", err or sys.stderr)


def drain(deployment: Deployment, selection: Selection, *, endpoint: str, timeout: int, options: SendOptions,
          progress: Progress, as_json: bool, out: TextIO | None = None) -> int:
    """Stop endpoints so they leave etcd once in-flight requests finish (bounded by `timeout`)."""
    parameters = {"endpoint": endpoint, "timeout": str(timeout), "executionTimeout": str(timeout + 120)}
    run = commands.run(deployment, "drain", selection, parameters=parameters,
                       options=replace(options, timeout=float(timeout) + 300), progress=progress)
    return print_run(run, as_json=as_json, out=out, changes=True)


def worker_fleets(deployment: Deployment, wanted: list[str] | None, *, allow_control: bool = True) -> list[str]:
    """Fleets in config order (prefill before decode), or the named ones after checking they exist."""
    known = list(deployment.config.fleets)
    if not wanted:
        return known
    allowed = known + ([naming.ROLE_CONTROL] if allow_control else [])
    unknown = [f for f in wanted if f not in allowed]
    if unknown:
        raise UsageError(f"--fleet {', '.join(unknown)}: no such fleet in config/{deployment.name}.yaml\n"
                         f"  fix: use one of {', '.join(allowed)}")
    return wanted

