"""`dictl destroy`: what a deleted stack keeps on purpose, found and deleted after explicit confirmation.

The stack retains its artifacts bucket and the control host's etcd volume (RemovalPolicy RETAIN), and a failed
create keeps both too. ECR creates the repositories of the deployment's pull-through cache on a first pull, outside
the stack, and keeps them when the stack deletes its rules ("Deleting a pull through cache rule doesn't have any
effect on the repositories or images that were cached", https://docs.aws.amazon.com/AmazonECR/latest/userguide/pull-through-cache.html);
they are found by the rules' prefixes (model/image_cache.py). log groups are deleted with the stack, but one left by an older or failed stack has the
deployment's name and would make the next create fail. They are found by the deployment tag that the stack puts on
every resource together with the stack-name tag only CloudFormation can set (di:deployment=NAME and
aws:cloudformation:stack-name=di-NAME, through the Resource Groups Tagging API) and by the log group prefix
/distack/NAME/, and deleted only with --yes or after the operator types the environment's name on a terminal.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, TextIO

from botocore.exceptions import ClientError

from ops.aws import pages
from ops.errors import UsageError
from ops.output import PARTIAL, table
from ops.progress import Progress
from model import image_cache, naming

BUCKET, VOLUME, LOG_GROUP, REPOSITORY, OTHER = "bucket", "volume", "log group", "image cache", "other"
# DeleteObjects takes at most 1000 keys per request:
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html
DELETE_BATCH = 1000


@dataclass(frozen=True)
class Retained:
    """One resource left by the deployment: its kind, its name (bucket, volume id, log group) and what it holds."""

    kind: str
    name: str
    detail: str = ""


@dataclass
class Outcome:
    """What `delete` did: the names it deleted, and for each one it could not, why."""

    deleted: list[str]
    failed: dict[str, str]


def stack_status(clients: Any, stack_name: str) -> str | None:
    """The stack's status, or None once it is gone (deleted, or never created)."""
    try:
        stacks = clients.cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as err:
        # DescribeStacks by name answers ValidationError "Stack with id NAME does not exist" for a deleted stack.
        if err.response.get("Error", {}).get("Code") == "ValidationError" and "does not exist" in str(err):
            return None
        raise
    live = [s["StackStatus"] for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"]
    return live[0] if live else None


# CloudFormation puts this tag on every resource it tags ("CloudFormation automatically creates the following
# stack-level tags with the prefix aws:", https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-properties-resource-tags.html),
# and "Tags owned by AWS have the reserved prefix: aws:" (https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_Tag.html):
# moto's S3 refuses such a tag from any requester too ("System tags cannot be added/updated by requester").
STACK_NAME_TAG = "aws:cloudformation:stack-name"


def _tagged_arns(clients: Any, env: str) -> Iterator[str]:
    """ARNs of every resource tagged di:deployment=ENV that the deployment's own stack created (the tag anyone can
    set is not enough: a look-alike with only it is left alone). GetResources ANDs its TagFilters and pages by
    PaginationToken: https://docs.aws.amazon.com/resourcegroupstagging/latest/APIReference/API_GetResources.html"""
    filters = [{"Key": naming.TAG_DEPLOYMENT, "Values": [env]},
               {"Key": STACK_NAME_TAG, "Values": [naming.stack_name(env)]}]
    for page in pages(clients.get("resourcegroupstaggingapi").get_resources, token_key="PaginationToken",
                      TagFilters=filters):
        for mapping in page.get("ResourceTagMappingList", []):
            yield mapping["ResourceARN"]


def _classify(arn: str) -> tuple[str, str]:
    """(kind, name) from an ARN: arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE."""
    parts = arn.split(":", 5)
    service, resource = parts[2], parts[5] if len(parts) > 5 else ""
    if service == "s3" and "/" not in resource:
        return BUCKET, resource
    if service == "ec2" and resource.startswith("volume/"):
        return VOLUME, resource.split("/", 1)[1]
    if service == "logs" and resource.startswith("log-group:"):
        return LOG_GROUP, resource[len("log-group:"):].removesuffix(":*")
    return OTHER, arn


def _log_groups(clients: Any, prefix: str) -> dict[str, dict]:
    """Log groups whose name starts with PREFIX, by name (DescribeLogGroups pages by nextToken)."""
    return {g["logGroupName"]: g
            for page in pages(clients.get("logs").describe_log_groups, token_key="nextToken", logGroupNamePrefix=prefix)
            for g in page.get("logGroups", [])}


def _cached_repositories(clients: Any, env: str) -> list[dict]:
    """The deployment's pull-through cache repositories (`di-ENV-quay/...`, `di-ENV-ecrp/...`), by name.
    DescribeRepositories pages by nextToken."""
    prefixes = tuple(image_cache.prefix(env, upstream) + "/" for upstream in image_cache.UPSTREAMS.values())
    found = [r for page in pages(clients.get("ecr").describe_repositories, token_key="nextToken")
             for r in page.get("repositories", []) if r["repositoryName"].startswith(prefixes)]
    return sorted(found, key=lambda r: r["repositoryName"])


def _size(count: float) -> str:
    """Bytes for people: 512 B, 3.4 MiB."""
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def find(clients: Any, env: str) -> list[Retained]:
    """Every resource the deployment ENV left in the region, with what it holds; gone ones are left out (the
    Tagging API may still list a resource for a while after it was deleted)."""
    kinds: dict[str, set[str]] = {BUCKET: set(), VOLUME: set(), LOG_GROUP: set(), OTHER: set()}
    for arn in _tagged_arns(clients, env):
        kind, name = _classify(arn)
        kinds[kind].add(name)
    groups = _log_groups(clients, naming.log_group(env, ""))
    kinds[LOG_GROUP] |= set(groups)
    found: list[Retained] = []
    for bucket in sorted(kinds[BUCKET]):
        try:
            clients.s3.head_bucket(Bucket=bucket)
        except ClientError:
            continue
        found.append(Retained(BUCKET, bucket, "every object version and delete marker, then the bucket"))
    if kinds[VOLUME]:
        volumes = clients.ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": sorted(kinds[VOLUME])}])
        for volume in sorted(volumes["Volumes"], key=lambda v: v["VolumeId"]):
            attached = ", ".join(a["InstanceId"] for a in volume.get("Attachments", []))
            found.append(Retained(VOLUME, volume["VolumeId"], f"{volume['Size']} GiB, {volume['State']}"
                                  + (f" (attached to {attached})" if attached else "")))
    for name in sorted(kinds[LOG_GROUP]):
        if name not in groups:  # tagged outside the prefix: look it up to see it still exists
            groups.update({g: d for g, d in _log_groups(clients, name).items() if g == name})
        if name in groups:
            found.append(Retained(LOG_GROUP, name, f"{_size(groups[name].get('storedBytes', 0))} stored"))
    found += [Retained(REPOSITORY, repo["repositoryName"], "cached images, and the repository")
              for repo in _cached_repositories(clients, env)]
    found += [Retained(OTHER, arn, "not a kind dictl deletes: delete it yourself if it is unused")
              for arn in sorted(kinds[OTHER])]
    return found


def _empty_and_delete_bucket(clients: Any, bucket: str) -> None:
    """A versioned bucket can only be deleted once every version and delete marker is gone
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/delete-bucket.html)."""
    s3 = clients.s3
    markers: dict[str, str] = {}
    while True:
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=DELETE_BATCH, **markers)
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                   for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(objects), DELETE_BATCH):
            done = s3.delete_objects(Bucket=bucket, Delete={"Objects": objects[start:start + DELETE_BATCH],
                                                            "Quiet": True})
            if done.get("Errors"):
                first = done["Errors"][0]
                raise RuntimeError(f"{len(done['Errors'])} object version(s) not deleted, e.g. {first['Key']}: "
                                   f"{first.get('Code')} {first.get('Message', '')}".rstrip())
        if not page.get("IsTruncated"):
            break
        markers = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
    s3.delete_bucket(Bucket=bucket)


def delete(clients: Any, retained: list[Retained], progress: Progress) -> Outcome:
    """Delete every bucket, volume, log group and cache repository in RETAINED, going on past failures."""
    outcome = Outcome(deleted=[], failed={})
    actions: dict[str, Callable[[str], Any]] = {
        LOG_GROUP: lambda name: clients.get("logs").delete_log_group(logGroupName=name),
        VOLUME: lambda name: clients.ec2.delete_volume(VolumeId=name),
        BUCKET: lambda name: _empty_and_delete_bucket(clients, name),
        # force: the repository goes with its images (DeleteRepository "force").
        REPOSITORY: lambda name: clients.get("ecr").delete_repository(repositoryName=name, force=True),
    }
    for item in retained:
        if item.kind not in actions:
            continue
        progress.update(f"deleting {item.kind} {item.name}")
        try:
            actions[item.kind](item.name)
        except (ClientError, RuntimeError) as err:
            outcome.failed[item.name] = str(err)
        else:
            outcome.deleted.append(item.name)
    return outcome


def _confirmed(env: str, count: int, stdin: TextIO, err: TextIO) -> bool:
    """The operator typed the environment's name on the terminal."""
    print(f"Type {env} to delete these {count} resource(s) and everything in them: ", end="", file=err, flush=True)
    return stdin.readline().strip() == env


def run(config: Any, clients: Any, *, yes: bool, as_json: bool, quiet: bool,
        stdin: TextIO | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """List what deployment CONFIG left behind and, once confirmed, delete it. 0 all deleted (or nothing to
    delete), 1 refused or not confirmed or nothing deleted, 2 no confirmation possible, 3 some deleted, some not."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    env, stack = config.name, naming.stack_name(config.name)
    status = stack_status(clients, stack)
    if status is not None:
        print(f"dictl destroy: stack {stack} still exists ({status}); what it holds is not left over yet, so "
              f"nothing was deleted\n  fix: make destroy ENV={env} CONFIRM={env} (wait for it to finish), then "
              f"dictl destroy --env {env}", file=err)
        return 1
    retained = find(clients, env)
    deletable = [r for r in retained if r.kind != OTHER]
    report: dict[str, Any] = {"stack": stack, "region": clients.region, "retained": [asdict(r) for r in retained],
                              "deleted": [], "failed": {}}
    if not as_json:
        caches = ", ".join(f"{image_cache.prefix(env, u)}/*" for u in image_cache.UPSTREAMS.values())
        where = (f"tags {naming.TAG_DEPLOYMENT}={env} and {STACK_NAME_TAG}={stack}, log groups "
                 f"{naming.log_group(env, '')}*, and ECR repositories {caches}")
        if retained:
            print(f"{stack} is deleted; left in {clients.region} ({where}):", file=out)
            print(table(("KIND", "NAME", "DETAIL"), [(r.kind, r.name, r.detail) for r in retained]), file=out)
        else:
            print(f"{stack} is deleted and left nothing in {clients.region} ({where})", file=out)
    if deletable and not yes:
        if not stdin.isatty():
            if as_json:
                print(json.dumps(report, indent=2), file=out)
            raise UsageError(f"nothing deleted: confirm with `dictl destroy --env {env} --yes`, or run it in a "
                             "terminal and type the environment's name")
        if not _confirmed(env, len(deletable), stdin, err):
            if as_json:
                print(json.dumps(report, indent=2), file=out)
            print("dictl destroy: not confirmed; nothing deleted", file=err)
            return 1
    outcome = delete(clients, deletable, Progress(stream=err, quiet=quiet))
    report.update(deleted=outcome.deleted, failed=outcome.failed)
    if as_json:
        print(json.dumps(report, indent=2), file=out)
    elif outcome.deleted:
        print(f"deleted: {', '.join(outcome.deleted)}", file=out)
    if outcome.failed:
        reasons = "; ".join(f"{name}: {why}" for name, why in outcome.failed.items())
        print(f"dictl destroy: not deleted: {reasons}", file=err)
        if outcome.deleted:
            print(f"dictl destroy: partially applied: {len(outcome.deleted)} of {len(deletable)} deleted "
                  f"({', '.join(outcome.deleted)}); run it again once the cause is fixed", file=err)
            return PARTIAL
        return 1
    return 0
