"""Render a node's user data: a cloud-config carrying one `node.env` (all per-deployment values) and the boot
stub that fetches the static `userdata/` tree (a CDK asset) into /opt/di; plus the asset and signal wiring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import aws_cdk as cdk
import jsii
import yaml
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from model import naming
from model.node_contract import env_file
from model import wheelhouse

# EC2 rejects larger user data: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RequestLaunchTemplateData.html
USER_DATA_LIMIT_BYTES = 16 * 1024
USERDATA_DIR = Path(__file__).resolve().parent.parent / "userdata"
PROXY_PACKAGE_DIR = Path(__file__).resolve().parent.parent / "diproxy"
BOOT_SCRIPT = USERDATA_DIR / "boot.sh"
BOOT_PATH = f"{naming.NODE_SCRIPTS_DIR}/boot.sh"


class _Literal(str):
    """A string emitted as a YAML literal block, so files read naturally in the rendered document."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))


def render(values: Mapping[str, str], proxy_values: Mapping[str, str] | None = None) -> str:
    """cloud-config that installs node.env (root-only: it names the secret and the bucket), proxy.env where DiStack's
    proxy runs (systemd reads it as root for the proxy's unit), and the boot stub, then runs the stub. Everything else
    arrives from the scripts asset named by DI_SCRIPTS_URL."""
    files = [
        {"path": naming.NODE_ENV_PATH, "permissions": "0600", "owner": "root:root",
         "content": _Literal(env_file(values))},
        *([{"path": naming.PROXY_ENV_PATH, "permissions": "0600", "owner": "root:root",
            "content": _Literal(env_file(proxy_values))}] if proxy_values is not None else []),
        {"path": BOOT_PATH, "permissions": "0755", "owner": "root:root",
         "content": _Literal(BOOT_SCRIPT.read_text(encoding="utf-8"))},
    ]
    document = {"write_files": files, "runcmd": [[BOOT_PATH]]}
    return "#cloud-config\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=10_000)


def scripts_asset(scope: Construct, construct_id: str) -> s3_assets.Asset:
    """The whole `userdata/` tree (including `userdata/ops/`) as one zip in the CDK assets bucket: it does not
    fit in user data, and an asset changes its key whenever a script changes, so a new launch-template
    version always names the scripts it was tested with."""
    return s3_assets.Asset(scope, construct_id, path=str(USERDATA_DIR),
                           exclude=["**/__pycache__", "**/*.pyc", "**/.*"])


def proxy_package_asset(scope: Construct, construct_id: str) -> s3_assets.Asset:
    """The DiStack proxy package (`proxy: distack`), installed into a venv on the control host at boot."""
    return s3_assets.Asset(scope, construct_id, path=str(PROXY_PACKAGE_DIR),
                           exclude=["**/__pycache__", "**/*.pyc", "**/.*"])


def proxy_wheelhouse_asset(scope: Construct, construct_id: str) -> s3_assets.Asset:
    """The proxy's dependencies as wheels for the control host (model/wheelhouse.py), shipped beside the package
    so the host installs them without PyPI. Built by `make wheelhouse`; the synth downloads nothing itself."""
    return s3_assets.Asset(scope, construct_id, path=str(wheelhouse.built()))


@jsii.implements(cdk.IStableStringProducer)
class _LogicalId:
    def __init__(self, target: SignalTarget) -> None:
        self._target = target

    def produce(self) -> str | None:
        group = self._target.group
        if group is None:
            raise ValueError("SignalTarget was never bound to an Auto Scaling group")
        return cdk.Stack.of(group).get_logical_id(group)


class SignalTarget:
    """The Auto Scaling group a node reports its bootstrap to. Its logical ID goes into node.env before the group
    exists (the group's launch template carries that very user data), so it is a lazy value bound afterwards.

    Why CreationPolicy + SignalResource rather than a WaitCondition: a WaitCondition (whose handle accepts a
    Reason) cannot be updated and its handle must be replaced on every update, and a presigned handle URL in
    the launch template would expire for instances launched later. The group's CreationPolicy counts one
    signal per instance, fails the stack at the first FAILURE, and is bounded by a timeout; the reason, which
    SignalResource has no field for, travels abbreviated in the UniqueId (shown in the stack event) and in
    full in the node log group.
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-attribute-creationpolicy.html
    """

    def __init__(self) -> None:
        self.group: autoscaling.CfnAutoScalingGroup | None = None
        self.logical_id = cdk.Lazy.string(_LogicalId(self))

    def bind(self, group: autoscaling.CfnAutoScalingGroup, *, count: int, timeout_minutes: int) -> None:
        """Make `group` wait for `count` instance signals (one per instance at creation) for at most the timeout."""
        self.group = group
        group.cfn_options.creation_policy = cdk.CfnCreationPolicy(
            resource_signal=cdk.CfnResourceSignal(count=count, timeout=f"PT{timeout_minutes}M"))
