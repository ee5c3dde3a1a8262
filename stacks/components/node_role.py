"""Instance role for one kind of node: what SSM Agent needs for Run Command and Session Manager, plus exactly the
bucket, secret and log access the node needs."""

from __future__ import annotations

from typing import Sequence

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from model import naming
from model.write_scope import USERID_VARIABLE


class NodeRole(Construct):
    """Role and instance profile. Reads the whole artifacts bucket; writes only its own folder under each of
    ``write_prefixes`` (``allow_own_writes``).

    Exposes ``role`` and ``instance_profile``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.IBucket, write_prefixes: Sequence[str],
                 log_groups: Sequence[logs.ILogGroup], secret: secretsmanager.ISecret | None) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self, "Role", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="DiStack node: SSM, artifacts bucket, logs",
        )
        self.role.add_to_principal_policy(ssm_agent_statement())
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[bucket.bucket_arn]))
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetObject"], resources=[bucket.arn_for_objects("*")]))
        self.allow_own_writes(bucket, write_prefixes)
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[group.log_group_arn for group in log_groups]))
        if secret is not None:
            self.allow_secret(secret)
        self.instance_profile = iam.InstanceProfile(self, "InstanceProfile", role=self.role)

    def allow_bootstrap(self, scripts: s3_assets.Asset) -> None:
        """Boot needs two more things: the node scripts (exactly one object of the CDK assets bucket, not the
        bucket) and the right to report its outcome to this stack's CreationPolicy.
        https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_SignalResource.html
        """
        self.allow_download(scripts)
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["cloudformation:SignalResource"], resources=[cdk.Aws.STACK_ID]))

    def allow_secret(self, secret: secretsmanager.ISecret) -> None:
        """Read one secret referenced by name. Such a reference has no ARN suffix yet; Secrets Manager appends six
        random characters, which the ?????? wildcard matches and nothing longer:
        https://docs.aws.amazon.com/secretsmanager/latest/userguide/auth-and-access_examples.html#auth-and-access_examples_wildcard
        """
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["secretsmanager:GetSecretValue"], resources=[f"{secret.secret_arn}-??????"]))

    def allow_metrics(self, namespace: str) -> None:
        """Publish CloudWatch metrics into one namespace. PutMetricData has no resource-level permissions; the
        cloudwatch:namespace condition key is how to scope it:
        https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/iam-cw-condition-keys-namespace.html
        """
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringEquals": {"cloudwatch:namespace": namespace}}))

    def allow_lifecycle(self, deployment: str) -> None:
        """Complete and extend the lifecycle actions of this deployment's groups, and find its own group.

        CompleteLifecycleAction and RecordLifecycleActionHeartbeat take the autoScalingGroup resource type and the
        condition keys autoscaling:ResourceTag/${TagKey} and aws:ResourceTag/${TagKey}; DescribeAutoScalingInstances
        takes no resource type, so "*" (Service Authorization Reference:
        https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2autoscaling.html). The
        groups' names and IDs are CloudFormation's to choose, and naming them here would make the role's policy wait
        for groups whose first instances need it, so the statement matches any group ARN and the tag condition
        limits it to the groups tagged with this deployment.
        """
        stack = cdk.Stack.of(self)
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"],
            resources=[stack.format_arn(service="autoscaling", resource="autoScalingGroup",
                                        resource_name="*:autoScalingGroupName/*",
                                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)],
            conditions={"StringEquals": {f"autoscaling:ResourceTag/{naming.TAG_DEPLOYMENT}": deployment}}))
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["autoscaling:DescribeAutoScalingInstances"], resources=["*"]))

    def allow_own_writes(self, bucket: s3.IBucket, write_prefixes: Sequence[str]) -> None:
        """Write objects only under PREFIX/${aws:userid}/ for each prefix: every instance of the role has its own
        folder, so no node can overwrite what another staged, or forge the logs and results dictl reads back as
        another node's. For a role assumed by an EC2 instance IAM resolves ${aws:userid} to ROLE-ID:INSTANCE-ID (IAM
        User Guide, "Request information that you can use for policy variables", principal table:
        https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html#policy-vars-infotouse;
        model/write_scope.py has the rest). The variable goes into the policy literally: CDK leaves "${aws:userid}"
        alone (its tokens are "${Token[...]}") and the ARN is an Fn::Join, never an Fn::Sub that would read ${...};
        tests/test_write_scope.py checks both on the synthesized template.
        """
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:PutObject", "s3:AbortMultipartUpload"],
            resources=[bucket.arn_for_objects(f"{prefix}{USERID_VARIABLE}/*") for prefix in write_prefixes]))

    def allow_download(self, asset: s3_assets.Asset) -> None:
        """Read exactly one asset object of the CDK assets bucket."""
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetObject"],
            resources=[cdk.Stack.of(self).format_arn(service="s3", region="", account="",
                                                      resource=asset.s3_bucket_name,
                                                      resource_name=asset.s3_object_key)]))

    def allow_metrics_agent(self, parameters: Sequence[ssm.IStringParameter], log_group: logs.ILogGroup) -> None:
        """The CloudWatch agent: read its own node kind's configuration parameters (exactly those, not a path) and
        write Embedded Metric Format records to the deployment's metrics log group, from which CloudWatch extracts
        the metrics (so no cloudwatch:PutMetricData). The agent creates its log streams itself.
        https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/create-iam-roles-for-cloudwatch-agent.html
        """
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["ssm:GetParameter"], resources=[p.parameter_arn for p in parameters]))
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[log_group.log_group_arn]))


# What SSM Agent calls to register the node and to take Run Command and Session Manager traffic, and nothing else:
# AmazonSSMManagedInstanceCore also grants ssm:GetParameter(s) on every parameter of the account, GetDocument,
# associations, inventory and patching, none of which DiStack uses. The agent's own calls are ssm:UpdateInstanceInformation
# and the ec2messages and ssmmessages operations
# (https://docs.aws.amazon.com/systems-manager/latest/userguide/systems-manager-setting-up-messageAPIs.html); Session
# Manager's minimum instance permissions are UpdateInstanceInformation plus the four ssmmessages channel operations
# (https://docs.aws.amazon.com/systems-manager/latest/userguide/getting-started-create-iam-instance-profile.html). None of
# these operations has a resource type (Service Authorization Reference, ec2messages and ssmmessages), so "*".
SSM_AGENT_ACTIONS = (
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
    "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
)


def ssm_agent_statement() -> iam.PolicyStatement:
    """The scoped replacement of AmazonSSMManagedInstanceCore."""
    return iam.PolicyStatement(actions=list(SSM_AGENT_ACTIONS), resources=["*"])
