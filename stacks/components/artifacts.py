"""Artifacts bucket, log groups, and the Hugging Face token and proxy API key secrets (referenced by name, never
created)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from model import naming

LOG_STREAMS = {"Nodes": "nodes", "Containers": "containers", "Commands": "commands"}
# Log groups kept when the stack is deleted: the command history is part of the forensic record.
RETAINED_STREAMS = {"commands"}


class Artifacts(Construct):
    """Where deployments keep what outlives an instance.

    Exposes ``bucket``, ``log_groups`` (by kind: nodes, containers, commands), ``hf_token_secret`` and
    ``proxy_api_key_secret`` (each None when not configured).
    """

    def __init__(self, scope: Construct, construct_id: str, *, env_name: str, retention: logs.RetentionDays,
                 hf_token_secret_name: str | None, proxy_api_key_secret_name: str | None = None) -> None:
        super().__init__(scope, construct_id)
        # Retained: compiled artifacts take hours to rebuild and benchmark results are the record of a run.
        self.bucket = s3.Bucket(
            self, "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=cdk.RemovalPolicy.RETAIN,
            lifecycle_rules=[s3.LifecycleRule(noncurrent_version_expiration=cdk.Duration.days(30),
                                              abort_incomplete_multipart_upload_after=cdk.Duration.days(7))],
        )
        # Named so operators and `dictl logs` find them; destroyed with the stack, because a retained group would make
        # the next create of this environment fail on its name. To keep them after a failed first create, deploy
        # with `make deploy NO_ROLLBACK=1` (the stack then stays CREATE_FAILED with everything it made).
        # The commands group is the exception: the record of what was run on the nodes must outlive the stack, so
        # it is retained under a name that carries this stack's own id (/distack/ENV/commands-1a2b3c4d, the first
        # group of the stack id's UUID), which the next stack of the environment does not share. dictl reads the name
        # from the CommandLogGroup output, and `dictl destroy` finds the group by its /distack/ENV/ prefix.
        self.log_groups = {
            stream: logs.LogGroup(self, f"{kind}LogGroup", log_group_name=self._name(env_name, stream),
                                  retention=retention, removal_policy=(
                                      cdk.RemovalPolicy.RETAIN if stream in RETAINED_STREAMS
                                      else cdk.RemovalPolicy.DESTROY))
            for kind, stream in LOG_STREAMS.items()
        }
        self.hf_token_secret = (
            secretsmanager.Secret.from_secret_name_v2(self, "HfTokenSecret", hf_token_secret_name)
            if hf_token_secret_name else None
        )
        self.proxy_api_key_secret = (
            secretsmanager.Secret.from_secret_name_v2(self, "ProxyApiKeySecret", proxy_api_key_secret_name)
            if proxy_api_key_secret_name else None
        )

    def _name(self, env_name: str, stream: str) -> str:
        """The group's name; a retained one's ends in this stack's id. A stack ID is
        arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/UUID
        (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/pseudo-parameter-reference.html)."""
        if stream not in RETAINED_STREAMS:
            return naming.log_group(env_name, stream)
        uuid = cdk.Fn.select(2, cdk.Fn.split("/", cdk.Aws.STACK_ID))
        return naming.log_group(env_name, f"{stream}-{cdk.Fn.select(0, cdk.Fn.split('-', uuid))}")
