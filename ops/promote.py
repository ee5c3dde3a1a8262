"""`dictl compile`'s last step: promote what one node staged to the compiled/ prefix every worker loads.

Nodes may write compiled artifacts only under staging/compiled/ROLE-ID:INSTANCE-ID/KEY/, their own folder (their role
grants s3:PutObject on staging/compiled/${aws:userid}/* and nothing on compiled/; model/write_scope.py), so a
compromised node can neither replace what the others load nor what another node staged. dictl takes the writer from
the folder: a set is promoted only from the folder of the instance asked for (or, with no instance named, the newest
complete set), and only when the folder's ROLE-ID is one of the stack's node roles. It checks the staged copy against
its SHA256SUMS (every listed file present and matching, nothing unlisted, no path leaving the prefix), then copies it
with the operator's credentials, removes what the previous compiled/KEY/ held beyond it, and deletes the staged copy.
Hashing reads every staged byte once through this machine; S3's own checksums cannot replace it, because a
multipart object's SHA-256 is a checksum of part checksums, not of the file
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterable

from ops.aws import objects
from model import naming
from model.write_scope import Writer, scoped, split_key, trusted

CHECKSUM_LIST = "SHA256SUMS"  # userdata/lib/checksums.sh CHECKSUM_LIST
# `sha256sum` output: 64 hex digits, a space, then a space (text mode) or '*' (binary mode), then the path.
SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
CHUNK = 8 * 1024 * 1024


class PromoteError(Exception):
    """The staged copy is not fit to promote; the message lists every problem."""


@dataclass(frozen=True)
class Promoted:
    """One promotion: the compiled key, how many files went to compiled/KEY/, and how many stale ones left it."""

    key: str
    files: int
    removed: int


@dataclass(frozen=True)
class Staged:
    """One complete staged set: who wrote it (from its folder), its compiled key, and when its SHA256SUMS landed."""

    writer: Writer
    key: str
    time: Any


def staged_sets(s3: Any, bucket: str, role_ids: Iterable[str] = ()) -> tuple[list[Staged], list[str]]:
    """Every complete set under staging/compiled/ (one with a SHA256SUMS), newest first, and the folders refused:
    a first segment that is not ROLE-ID:INSTANCE-ID, or whose ROLE-ID is not a node role of ROLE_IDS."""
    sets: list[Staged] = []
    refused: set[str] = set()
    prefix = naming.BUCKET_PREFIX_STAGING_COMPILED
    for obj in objects(s3, bucket, prefix):
        writer, rest = split_key(prefix, obj["Key"])
        if not trusted(writer, role_ids):
            refused.add(obj["Key"][len(prefix):].split("/", 1)[0])
            continue
        key, _, path = rest.partition("/")
        if writer is not None and key and path == CHECKSUM_LIST:
            sets.append(Staged(writer, key, obj["LastModified"]))
    sets.sort(key=lambda staged: staged.time, reverse=True)
    return sets, sorted(refused)


def staged_by(s3: Any, bucket: str, instance_id: str | None, role_ids: Iterable[str] = ()) -> Staged | None:
    """The set INSTANCE_ID staged last (by its SHA256SUMS' time), or the newest complete set of any node when
    INSTANCE_ID is None; None if there is none. A set in another instance's folder is never INSTANCE_ID's."""
    return pick(staged_sets(s3, bucket, role_ids)[0], instance_id)


def pick(sets: list[Staged], instance_id: str | None) -> Staged | None:
    """The newest of SETS (newest first) written by INSTANCE_ID, or the newest of all when INSTANCE_ID is None."""
    return next((s for s in sets if instance_id is None or s.writer.instance_id == instance_id), None)


def _listed(text: str, where: str) -> tuple[dict[str, str], list[str]]:
    """SHA256SUMS as {relative path: digest}, and every problem with it."""
    listed: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        match = SUM_LINE.match(line)
        if not match:
            problems.append(f"{where}{CHECKSUM_LIST} line {number} is not `sha256sum` output")
            continue
        path = match.group(2).removeprefix("./")
        if path.startswith("/") or ".." in path.split("/") or path == CHECKSUM_LIST:
            problems.append(f"{where}{CHECKSUM_LIST} line {number} names {path!r}, outside the staged files")
            continue
        listed[path] = match.group(1)
    return listed, problems


def _sha256(s3: Any, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def source_prefix(staged: Staged) -> str:
    """staging/compiled/ROLE-ID:INSTANCE-ID/KEY/"""
    return f"{scoped(naming.BUCKET_PREFIX_STAGING_COMPILED, staged.writer)}{staged.key}/"


def check(s3: Any, bucket: str, staged: Staged) -> list[str]:
    """The staged copy's files, in the order to copy them (SHA256SUMS last), once it matches its list."""
    source = source_prefix(staged)
    where = f"s3://{bucket}/{source}"
    files = {obj["Key"][len(source):] for obj in objects(s3, bucket, source)}
    if CHECKSUM_LIST not in files:
        raise PromoteError(f"{where} has no {CHECKSUM_LIST}: nothing is promoted without one")
    body = s3.get_object(Bucket=bucket, Key=source + CHECKSUM_LIST)["Body"].read().decode("utf-8", "replace")
    listed, problems = _listed(body, where)
    files.discard(CHECKSUM_LIST)
    problems += [f"{where}{path} is listed in {CHECKSUM_LIST} but missing" for path in sorted(set(listed) - files)]
    problems += [f"{where}{path} is not listed in {CHECKSUM_LIST}" for path in sorted(files - set(listed))]
    problems += [f"{where}{path} does not match its SHA-256 in {CHECKSUM_LIST}"
                 for path in sorted(files & set(listed)) if _sha256(s3, bucket, source + path) != listed[path]]
    if problems:
        raise PromoteError("\n".join(problems))
    return sorted(files) + [CHECKSUM_LIST]


def promote(s3: Any, bucket: str, staged: Staged) -> Promoted:
    """Check the staged copy, copy it to compiled/KEY/ (SHA256SUMS last), drop what compiled/KEY/ held beyond it,
    and delete the staged copy. Raises PromoteError, and changes nothing, when the check fails."""
    key = staged.key
    source = source_prefix(staged)
    target = f"{naming.BUCKET_PREFIX_COMPILED}{key}/"
    files = check(s3, bucket, staged)
    for path in files:
        # The managed copy switches to a multipart copy above its threshold: CopyObject alone stops at 5 GB
        # (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html).
        s3.copy({"Bucket": bucket, "Key": source + path}, bucket, target + path)
    stale = [obj["Key"] for obj in objects(s3, bucket, target) if obj["Key"][len(target):] not in files]
    for keys in (stale, [source + path for path in files]):
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                     "Quiet": True})
    return Promoted(key, len(files), len(stale))
