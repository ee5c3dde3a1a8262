"""Send one SSM command to tag-selected targets, wait for it, and collect every instance's result.

Results come from ListCommandInvocations (Details, 50 per page), never one GetCommandInvocation per instance; only a
step whose output was cut at that call's inline limit is read again with GetCommandInvocation, which returns its first
24,000 characters. No S3 output location is sent: the SSM Agent would write it with the instance role as
commands/COMMAND-ID/INSTANCE-ID/... (aws/amazon-ssm-agent@1c217c89 agent/runcommand/utils.go), a key no per-instance
grant can scope, so a node able to write it could forge what dictl reads as another node's output. The nodes' roles
write no commands/ prefix at all (stacks/di_stack.py WRITE_PREFIXES).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from botocore.exceptions import ClientError

from ops.aws import Clients, pages
from ops.progress import Progress
from ops.results import InstanceResult, RunResult
from ops.targets import Deployment, Instance, Selection

# CommandPluginOutput is cut at 2,500 characters in ListCommandInvocations:
# https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_CommandPlugin.html
INLINE_OUTPUT_LIMIT = 2500
# GetCommandInvocation's StandardOutputContent: "The first 24,000 characters written by the plugin to stdout"
# (https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_GetCommandInvocation.html).
WHOLE_OUTPUT_LIMIT = 24000
TRUNCATION_MARKER = "--output truncated--"
INVOCATIONS_PAGE = 50
DONE_COMMAND_STATES = {"Success", "Failed", "TimedOut", "Cancelled"}
DONE_INVOCATION_STATES = {"Success", "Failed", "TimedOut", "Cancelled", "Undeliverable", "Terminated",
                          "InvalidPlatform", "AccessDenied"}
# Status given to an instance dictl stopped waiting for, and to one that never received the command.
WAIT_TIMED_OUT = "WaitTimedOut"
NOT_DELIVERED = "NoInvocation"


@dataclass
class SendOptions:
    """Rollout knobs: SSM runs at most `concurrency` targets at once and stops after `max_errors` failures."""

    concurrency: str = "50"
    max_errors: str = "0"
    timeout: float = 3600.0
    poll_seconds: float = 5.0
    comment: str = ""


def send(clients: Clients, *, document: str, targets: list[dict[str, Any]], parameters: Mapping[str, str],
         options: SendOptions) -> str:
    """One SendCommand by Targets, with no S3 output location (see the module's docstring)."""
    # Named instances go as InstanceIds (same 50 limit); tag selections as Targets, resolved by SSM.
    if len(targets) == 1 and targets[0]["Key"] == "InstanceIds":
        selection: dict[str, Any] = {"InstanceIds": targets[0]["Values"]}
    else:
        selection = {"Targets": targets}
    response = clients.ssm.send_command(
        DocumentName=document,
        **selection,
        Parameters={key: [value] for key, value in parameters.items()},
        MaxConcurrency=options.concurrency,
        MaxErrors=options.max_errors,
        Comment=(options.comment or f"dictl {document}")[:100],
    )
    return response["Command"]["CommandId"]


def wait(clients: Clients, command_id: str, *, options: SendOptions, progress: Progress,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Poll ListCommands (one call per poll, whatever the target count); False if `options.timeout` passed."""
    deadline = clock() + options.timeout
    while True:
        command = clients.ssm.list_commands(CommandId=command_id)["Commands"][0]
        status = command.get("Status", "Pending")
        progress.update(f"{command.get('DocumentName', '')} {command_id}: {status}, "
                        f"{command.get('CompletedCount', 0)}/{command.get('TargetCount', '?')} done, "
                        f"{command.get('ErrorCount', 0)} failed")
        if status in DONE_COMMAND_STATES:
            return True
        if clock() >= deadline:
            try:
                clients.ssm.cancel_command(CommandId=command_id)
            except ClientError:
                pass  # already finishing: whatever state it reached is collected next
            return False
        sleep(options.poll_seconds)


def collect(clients: Clients, command_id: str) -> list[Mapping[str, Any]]:
    """Every invocation of a command with its plugin output, in pages of 50."""
    invocations: list[Mapping[str, Any]] = []
    for page in pages(clients.ssm.list_command_invocations, CommandId=command_id, Details=True,
                      MaxResults=INVOCATIONS_PAGE):
        invocations.extend(page.get("CommandInvocations", []))
    return invocations


def plugin_output(clients: Clients, invocation: Mapping[str, Any]) -> str:
    """All steps' output of an invocation; a step cut at the inline limit is read again, up to 24,000 characters."""
    parts = []
    for plugin in invocation.get("CommandPlugins", []):
        text = plugin.get("Output", "") or ""
        if _truncated(text):
            text = _whole_output(clients, invocation, plugin) or text
        parts.append(text)
    return "\n".join(p for p in parts if p)


def _truncated(text: str) -> bool:
    return TRUNCATION_MARKER in text or len(text) >= INLINE_OUTPUT_LIMIT


def _whole_output(clients: Clients, invocation: Mapping[str, Any], plugin: Mapping[str, Any]) -> str | None:
    """One step's stdout (and stderr, if any) from GetCommandInvocation; None if SSM will not say."""
    try:
        found = clients.ssm.get_command_invocation(CommandId=invocation["CommandId"],
                                                   InstanceId=invocation["InstanceId"], PluginName=plugin["Name"])
    except (ClientError, KeyError):
        return None
    text = found.get("StandardOutputContent", "") or ""
    if len(text) >= WHOLE_OUTPUT_LIMIT:
        text += f"\n--output cut by SSM at {WHOLE_OUTPUT_LIMIT} characters--"
    error = found.get("StandardErrorContent", "") or ""
    return text + (f"\n----------ERROR-------\n{error}" if error else "")


def run(deployment: Deployment, verb: str, selection: Selection, *, parameters: Mapping[str, str] | None = None,
        options: SendOptions | None = None, progress: Progress | None = None,
        expected: list[Instance] | None = None) -> RunResult:
    """Run a verb's document on the selection and return every instance's result.

    Instances the tags select but SSM never invoked (agent offline, not yet registered) count as failures.
    """
    options = options or SendOptions()
    progress = progress or Progress()
    document = deployment.document(verb)
    _ = deployment.bucket  # first, so a missing stack is reported before anything else
    if expected is None:
        expected = deployment.instances(selection)
    by_id = {i.instance_id: i for i in expected}
    result = RunResult(document)
    if not expected:
        return result
    for targets in deployment.ssm_targets(selection):
        command_id = send(deployment.clients, document=document, targets=targets, parameters=parameters or {},
                          options=options)
        result.command_ids.append(command_id)
        finished = wait(deployment.clients, command_id, options=options, progress=progress)
        for invocation in collect(deployment.clients, command_id):
            instance_id = invocation["InstanceId"]
            status = invocation.get("Status", "Pending")
            if not finished and status not in DONE_INVOCATION_STATES:
                status = WAIT_TIMED_OUT
            known = by_id.get(instance_id)
            result.results.append(InstanceResult(
                instance_id, status, plugin_output(deployment.clients, invocation),
                role=known.role if known else "?", fleet=known.fleet if known else "?", command_id=command_id))
    progress.done()
    invoked = {r.instance_id for r in result.results}
    for instance in expected:
        if instance.instance_id not in invoked:
            result.results.append(InstanceResult(instance.instance_id, NOT_DELIVERED,
                                                 "SSM never ran the command here (agent offline or not registered)",
                                                 role=instance.role, fleet=instance.fleet))
    result.results.sort(key=lambda r: (r.fleet, r.instance_id))
    return result
