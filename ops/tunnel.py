"""`dictl tunnel`: SSM port forwarding from this machine to the proxy on the control host (no open ports)."""

from __future__ import annotations

import json
import shlex
import shutil
from typing import Callable

from ops.errors import UsageError
from ops.targets import Deployment, Selection
from model import naming

PORT_FORWARDING_DOCUMENT = "AWS-StartPortForwardingSession"
# What `aws ssm start-session` needs on this machine, with where to get it.
TOOLS = (
    ("aws", "the AWS CLI v2",
     "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"),
    ("session-manager-plugin", "the Session Manager plugin for the AWS CLI",
     "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html"),
)


def check_tools(which: Callable[[str], str | None] | None = None) -> None:
    """Name every missing local tool with its install page (a UsageError, exit 2), before anything runs."""
    which = which or shutil.which
    missing = [(name, what, url) for name, what, url in TOOLS if not which(name)]
    if missing:
        lines = [f"`{name}` not found on PATH: dictl tunnel needs {what}" for name, what, _ in missing]
        fixes = [f"install {what}: {url}" for _, what, url in missing]
        raise UsageError("\n".join(lines) + "\n" + "\n".join(f"  fix: {fix}" for fix in fixes)
                         + "\n  (or run `dictl tunnel --print` and start the session elsewhere)")


def control_instance(deployment: Deployment) -> str:
    """The running control host (the only instance tagged di:role=control)."""
    live = [i for i in deployment.instances(Selection(role=naming.ROLE_CONTROL)) if i.state == "running"]
    if not live:
        raise UsageError(f"deployment {deployment.name} has no running control host\n"
                         f"  fix: check the stack (make deploy ENV={deployment.name}) and `dictl status`")
    return live[0].instance_id


def command(instance_id: str, *, region: str, local_port: int, remote_port: int = naming.PROXY_PORT,
            profile: str | None = None) -> list[str]:
    """The `aws ssm start-session` argv (needs the Session Manager plugin on this machine)."""
    argv = ["aws", "ssm", "start-session", "--target", instance_id,
            "--document-name", PORT_FORWARDING_DOCUMENT,
            "--parameters", json.dumps({"portNumber": [str(remote_port)], "localPortNumber": [str(local_port)]},
                                       separators=(",", ":")),
            "--region", region]
    if profile:
        argv += ["--profile", profile]
    return argv


def shell_line(argv: list[str]) -> str:
    """The argv as one copy-pasteable shell line."""
    return shlex.join(argv)
