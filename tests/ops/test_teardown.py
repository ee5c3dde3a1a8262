"""`dictl destroy` on a mocked account: what a deleted stack left, found by tag and log group prefix, deleted only
once confirmed; refused while the stack exists; a partial failure says what was and was not deleted."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import boto3
import pytest
from moto import mock_aws

from ops.aws import Clients
from ops.cli import main
from model import naming
from tests.ops.conftest import REGION


class Terminal(io.StringIO):
    """stdin as a terminal where the operator types TEXT."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def account(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        made: dict[str, Any] = {}

        def clients(region: str, profile: str | None = None) -> Clients:
            shared = Clients(session)
            shared._clients = made  # one botocore client per service for the test and all its dictl runs
            return shared

        def dictl(*argv: str, typed: str | None = None) -> tuple[int, str, str]:
            monkeypatch.setattr("sys.stdin", Terminal(typed) if typed is not None else io.StringIO(""))
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = main(list(argv), clients_factory=clients)
            return code, out.getvalue(), err.getvalue()

        yield clients(REGION).get, dictl


def tag(env: str) -> list[dict[str, str]]:
    """The tags the stack's resources carry: the deployment's, and the stack name CloudFormation adds."""
    return [{"Key": naming.TAG_DEPLOYMENT, "Value": env}, {"Key": "aws:cloudformation:stack-name", "Value": f"di-{env}"}]


def tag_bucket(bucket: str, tags: list[dict[str, str]]) -> None:
    """Tag a bucket as CloudFormation does: S3 refuses aws: keys from any requester (moto too), so straight
    through moto's backend."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    s3_backends[DEFAULT_ACCOUNT_ID]["global"].put_bucket_tagging(bucket, {t["Key"]: t["Value"] for t in tags})


def leftovers(client: Any, env: str, *, attach: bool = False) -> dict[str, str]:
    """What a deleted stack of ENV keeps: a versioned, tagged bucket holding versions and a delete marker, the
    tagged etcd volume (attached to an instance if ATTACH, so it cannot be deleted), a tagged log group and an
    untagged one under /distack/ENV/."""
    s3, ec2, logs = client("s3"), client("ec2"), client("logs")
    bucket = f"di-{env}-artifactsbucket-0a1b2c"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    tag_bucket(bucket, tag(env))
    for body in (b"one", b"two"):
        s3.put_object(Bucket=bucket, Key="compiled/model.tar", Body=body)
    s3.delete_object(Bucket=bucket, Key="compiled/model.tar")  # a delete marker on top of two versions
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=20, VolumeType="gp3", TagSpecifications=[
        {"ResourceType": "volume", "Tags": tag(env)}])["VolumeId"]
    if attach:
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m5.large",
                                     Placement={"AvailabilityZone": f"{REGION}a"})["Instances"][0]["InstanceId"]
        ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device="/dev/sdf")
    else:
        instance = ""
    logs.create_log_group(logGroupName=naming.log_group(env, "nodes"), tags={t["Key"]: t["Value"] for t in tag(env)})
    logs.create_log_group(logGroupName=naming.log_group(env, "metrics"))  # found by its name alone
    return {"bucket": bucket, "volume": volume, "instance": instance}


def test_destroy_refuses_while_the_stack_exists(account):
    client, dictl = account
    client("cloudformation").create_stack(StackName="di-prod", TemplateBody=json.dumps(
        {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}))
    client("s3").create_bucket(Bucket="di-prod-artifacts", CreateBucketConfiguration={
        "LocationConstraint": REGION})
    code, out, err = dictl("destroy", "--env", "prod", "--yes")
    assert code == 1
    assert "stack di-prod still exists (CREATE_COMPLETE)" in err
    assert "fix: make destroy ENV=prod CONFIRM=prod" in err
    client("s3").head_bucket(Bucket="di-prod-artifacts")  # untouched


def test_destroy_lists_by_tag_and_prefix_and_deletes_only_once_confirmed_reporting_partial_failure(account):
    client, dictl = account
    made = leftovers(client, "prod", attach=True)
    # Another deployment's: a bucket tagged production, and a log group under /distack/prod (without the slash).
    client("s3").create_bucket(Bucket="di-production-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    tag_bucket("di-production-bucket", tag("production"))
    client("logs").create_log_group(logGroupName="/distack/production/nodes",
                                    tags={naming.TAG_DEPLOYMENT: "production"})
    code, out, err = dictl("destroy", "--env", "prod")  # no terminal, no --yes
    assert code == 2
    assert "nothing deleted: confirm with `dictl destroy --env prod --yes`" in err
    rows = [line.split()[:2] for line in out.splitlines()[2:]]
    assert rows == [["bucket", made["bucket"]], ["volume", made["volume"]], ["log", "group"], ["log", "group"]]
    assert "/distack/prod/metrics" in out and "/distack/prod/nodes" in out and "production" not in out
    code, _, err = dictl("destroy", "--env", "prod", typed="dev\n")  # a terminal, the wrong name
    assert code == 1 and "not confirmed; nothing deleted" in err
    client("s3").head_bucket(Bucket=made["bucket"])

    # Typed right: everything goes but the volume, still attached to an instance: partially applied, exit 3.
    code, out, err = dictl("destroy", "--env", "prod", "--json", "--quiet", typed="prod\n")
    assert code == 3
    report = json.loads(out)
    assert sorted(report["deleted"]) == sorted([made["bucket"], "/distack/prod/metrics", "/distack/prod/nodes"])
    assert list(report["failed"]) == [made["volume"]] and "VolumeInUse" in report["failed"][made["volume"]]
    assert f"not deleted: {made['volume']}: " in err and "partially applied: 3 of 4 deleted" in err
    # The bucket is gone with its versions and delete marker; the other deployment's are all there.
    assert [b["Name"] for b in client("s3").list_buckets()["Buckets"]] == ["di-production-bucket"]
    assert [g["logGroupName"] for g in client("logs").describe_log_groups()["logGroups"]] == [
        "/distack/production/nodes"]

    client("ec2").detach_volume(VolumeId=made["volume"], InstanceId=made["instance"])
    code, out, err = dictl("destroy", "--env", "prod", "--yes")
    assert code == 0, err
    assert out.splitlines()[-1] == f"deleted: {made['volume']}"
    volumes = {v["VolumeId"] for v in client("ec2").describe_volumes()["Volumes"]}
    assert made["volume"] not in volumes and len(volumes) == 1  # the instance's root volume
    code, out, _ = dictl("destroy", "--env", "prod")
    assert code == 0 and "di-prod is deleted and left nothing" in out


def test_destroy_leaves_a_look_alike_with_only_the_deployment_tag(account):
    """Anyone may tag a bucket or volume di:deployment=prod; only CloudFormation sets aws:cloudformation:stack-name."""
    client, dictl = account
    made = leftovers(client, "prod")
    s3, ec2 = client("s3"), client("ec2")
    s3.create_bucket(Bucket="someone-elses-data", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_tagging(Bucket="someone-elses-data", Tagging={"TagSet": tag("prod")[:1]})
    # Another stack's resource with the deployment tag is not this deployment's either.
    s3.create_bucket(Bucket="other-stack-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    tag_bucket("other-stack-bucket", [tag("prod")[0], {"Key": "aws:cloudformation:stack-name", "Value": "other"}])
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1, TagSpecifications=[
        {"ResourceType": "volume", "Tags": tag("prod")[:1]}])["VolumeId"]
    code, out, err = dictl("destroy", "--env", "prod", "--yes", "--json", "--quiet")
    assert code == 0, err
    assert sorted(json.loads(out)["deleted"]) == sorted([made["bucket"], made["volume"], "/distack/prod/metrics",
                                                         "/distack/prod/nodes"])
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == ["other-stack-bucket", "someone-elses-data"]
    assert [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"] if v["Size"] == 1] == [volume]


def test_destroy_deletes_the_deployments_cached_image_repositories_and_no_other(account):
    """ECR makes the pull-through cache's repositories on a first pull and keeps them after the stack deletes its
    rules: they are found by the deployment's prefixes, another deployment's (di-production-quay) left alone."""
    client, dictl = account
    ecr = client("ecr")
    ours = ["di-prod-quay/coreos/etcd", "di-prod-ecrp/neuron/pytorch-inference-vllm-neuronx"]
    theirs = ["di-production-quay/coreos/etcd", "quay/coreos/etcd"]
    for name in ours + theirs:
        ecr.create_repository(repositoryName=name)
    ecr.put_image(repositoryName=ours[0], imageManifest=json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "layers": []}),
                  imageTag="v3.5.17")  # a cached image: the repository goes with it (force)
    code, out, err = dictl("destroy", "--env", "prod")  # no terminal, no --yes: listed, nothing deleted
    assert code == 2 and "nothing deleted" in err
    listed = [line.split()[2] for line in out.splitlines()[2:] if line.startswith("image cache")]
    assert listed == sorted(ours)
    code, out, err = dictl("destroy", "--env", "prod", "--yes", "--json", "--quiet")
    assert code == 0, err
    assert sorted(json.loads(out)["deleted"]) == sorted(ours)
    assert sorted(r["repositoryName"] for r in ecr.describe_repositories()["repositories"]) == sorted(theirs)


def test_destroy_follows_every_services_own_page_token(account):
    """Logs and ECR page by nextToken, the Tagging API by PaginationToken (ops.aws.pages token_key): what lies on a
    second page is found too."""
    client, dictl = account
    for index in range(3):
        client("ecr").create_repository(repositoryName=f"di-prod-quay/coreos/etcd{index}")
        client("logs").create_log_group(logGroupName=f"/distack/prod/nodes{index}")
    from ops import teardown

    class OnePerPage:
        """A client whose list calls answer one item a page, under the service's own token name."""

        def __init__(self, real: Any, call: str, items: str, token: str) -> None:
            self.real, self.call, self.items, self.token = real, call, items, token

        def __getattr__(self, name: str) -> Any:
            if name != self.call:
                return getattr(self.real, name)

            def one(**kwargs: Any) -> dict:
                start = int(kwargs.pop(self.token, 0))
                everything = getattr(self.real, name)(**kwargs)[self.items]
                page = {self.items: everything[start:start + 1]}
                if start + 1 < len(everything):
                    page[self.token] = str(start + 1)
                return page
            return one

    class Clients:
        def get(self, service: str) -> Any:
            if service == "ecr":
                return OnePerPage(client("ecr"), "describe_repositories", "repositories", "nextToken")
            return OnePerPage(client("logs"), "describe_log_groups", "logGroups", "nextToken")

    assert [r["repositoryName"] for r in teardown._cached_repositories(Clients(), "prod")] == [
        f"di-prod-quay/coreos/etcd{index}" for index in range(3)]
    assert sorted(teardown._log_groups(Clients(), "/distack/prod/")) == [
        f"/distack/prod/nodes{index}" for index in range(3)]
