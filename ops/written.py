"""What a node says it wrote to the artifacts bucket, checked against where it may write: its own folder
PREFIX/ROLE-ID:INSTANCE-ID/ (model/write_scope.py). `dictl logs` and `dictl bench` print each instance's upload with
the instance that wrote it, and flag an upload that claims another instance's folder or a role that is not one of the
stack's node roles: such an object was not written by this node under its own scope, so dictl does not point at it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ops.results import RunResult
from model.write_scope import split_key, trusted


@dataclass(frozen=True)
class Upload:
    """One instance's reported upload: its URI, and why it is not the instance's own (empty when it is)."""

    instance_id: str
    uri: str
    problem: str = ""


def uploads(run: RunResult, bucket: str, prefix: str, role_ids: Iterable[str]) -> list[Upload]:
    """The last s3://BUCKET/PREFIX... line of each successful instance's output, checked."""
    head = f"s3://{bucket}/{prefix}"
    role_ids = tuple(role_ids)
    found = []
    for result in run.results:
        lines = [line.strip() for line in result.output.splitlines() if line.strip().startswith(head)]
        if not result.ok or not lines:
            continue
        uri = lines[-1]
        writer, _ = split_key(prefix, uri[len(f"s3://{bucket}/"):])
        problem = ""
        if writer is None or writer.instance_id != result.instance_id:
            problem = f"not {result.instance_id}'s own folder {prefix}ROLE-ID:{result.instance_id}/"
        elif not trusted(writer, role_ids):
            problem = f"role {writer.role_id} is not one of the stack's node roles ({', '.join(role_ids)})"
        found.append(Upload(result.instance_id, uri, problem))
    return found
