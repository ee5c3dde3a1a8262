"""Render a node's user data: a cloud-config carrying one `node.env` (all per-deployment values).

The node scripts in `userdata/` read only that file, so no per-environment value ever sits in a script.
"""

from __future__ import annotations

import shlex
from typing import Mapping

import yaml

from stacks import naming

# EC2 rejects larger user data: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RequestLaunchTemplateData.html
USER_DATA_LIMIT_BYTES = 16 * 1024


class _Literal(str):
    """A string emitted as a YAML literal block, so files read naturally in the rendered document."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))


def env_file(values: Mapping[str, str]) -> str:
    """`KEY='value'` lines, sorted, shell-quoted (CDK tokens stay intact and resolve at deploy)."""
    return "".join(f"{key}={shlex.quote(str(value))}\n" for key, value in sorted(values.items()))


def render(values: Mapping[str, str]) -> str:
    """cloud-config that installs node.env (root-only: it names the secret and the bucket)."""
    files = [{"path": naming.NODE_ENV_PATH, "permissions": "0600", "owner": "root:root",
              "content": _Literal(env_file(values))}]
    document = {"write_files": files}
    return "#cloud-config\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=10_000)
