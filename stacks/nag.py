"""Every cdk-nag AwsSolutions acknowledgment, on the narrowest construct, each with its specific reason."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import IConstruct



def acknowledge(scope: IConstruct, rule: str, reason: str, finding: str | None = None) -> None:
    """Acknowledge one finding (cdk-nag v3: `Validations` + `cdk.Acknowledgment`) below `scope`."""
    rule_id = f"AwsSolutions::AwsSolutions-{rule}" + (f"[{finding}]" if finding else "")
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule_id, reason=reason))


def bucket_token(bucket: IConstruct) -> str:
    """How cdk-nag spells a bucket's ARN inside a finding."""
    stack = cdk.Stack.of(bucket)
    return f"<{stack.get_logical_id(bucket.node.default_child)}.Arn>"  # type: ignore[arg-type]


def acknowledge_node_role(role: IConstruct, bucket: IConstruct, write_prefixes: list[str]) -> None:
    """The findings every node role carries by design."""
    arn = bucket_token(bucket)
    acknowledge(role, "IAM5", "Nodes read any object of their own deployment's artifacts bucket (models, "
                              "compiled artifacts); object keys are not known at deploy time.", f"Resource::{arn}/*")
    for prefix in write_prefixes:
        acknowledge(role, "IAM5", f"Each node writes only its own folder {prefix}${{aws:userid}}/ (ROLE-ID:INSTANCE-ID) "
                                  "of its own bucket; the keys below it name runs that exist only later.",
                    # cdk-nag spells the policy variable ${aws:userid} as <aws:userid> in its finding.
                    f"Resource::{arn}/{prefix}<aws:userid>/*")


def acknowledge_control_role(role: IConstruct, *, publishes_metrics: bool) -> None:
    """The control host attaches its fixed interface and etcd volume to whichever instance the group launched,
    and with the DiStack proxy publishes the proxy's metrics."""
    acknowledge(role, "IAM5", "The instance is launched later by the Auto Scaling group; the statement's "
                              "condition limits it to instances tagged with this deployment's control role.",
                f"Resource::arn:<AWS::Partition>:ec2:{cdk.Stack.of(role).region}:<AWS::AccountId>:instance/*")
    reason = ("ec2:DescribeNetworkInterfaces and ec2:DescribeVolumes support no resource-level permissions; the "
              "boot script polls them to see its attachments complete. ecr:GetAuthorizationToken has no resource "
              "type; it only lets docker log in, and the pull actions are limited to the image cache's repositories.")
    if publishes_metrics:
        reason += (" cloudwatch:PutMetricData supports none either; a cloudwatch:namespace condition limits it to "
                   "the proxy's namespace.")
    acknowledge(role, "IAM5", reason, "Resource::*")


def acknowledge_worker_lifecycle(role: IConstruct) -> None:
    """The worker completes its own lifecycle hooks (NodeRole.allow_lifecycle)."""
    stack = cdk.Stack.of(role)
    acknowledge(role, "IAM5", "Auto Scaling group ARNs hold an ID and a name that CloudFormation assigns when it "
                              "creates the groups; the autoscaling:ResourceTag/di:deployment condition limits "
                              "CompleteLifecycleAction and RecordLifecycleActionHeartbeat to this deployment's groups.",
                f"Resource::arn:<AWS::Partition>:autoscaling:{stack.region}:<AWS::AccountId>:autoScalingGroup:*:"
                "autoScalingGroupName/*")
    acknowledge(role, "IAM5", "autoscaling:DescribeAutoScalingInstances supports no resource-level permissions; the "
                              "node calls it to learn which group it belongs to, whose name cannot be in its own "
                              "launch template's user data.", "Resource::*")


def acknowledge_scaling_groups(stack: IConstruct) -> None:
    """AS3 asks for SNS notifications on every Auto Scaling group."""
    acknowledge(stack, "AS3", "Launch failures (for example InsufficientInstanceCapacity) and replacements are "
                              "shown by `dictl status` from the scaling activities, by CloudFormation events, and "
                              "by the dashboard's desired/in-service panels and the control-host alarm; the alarm "
                              "topic's KMS key trusts CloudWatch only, and scaling notifications would need it to "
                              "trust the Auto Scaling service-linked role as well.")


def acknowledge_bucket(bucket: IConstruct) -> None:
    """S1 asks for server access logs on the artifacts bucket."""
    acknowledge(bucket, "S1", "Only the deployment's own instance roles and operators touch this bucket; "
                              "CloudTrail records its API calls, and a second bucket for access logs would "
                              "itself need access logs.")


def acknowledge_etcd_trust(trust: IConstruct) -> None:
    """The etcd CA and credentials, made once by the first control host."""
    acknowledge(trust, "SMG4", "The etcd CA and passwords are made once by control host m0 (userdata/lib/"
                               "etcd_trust.sh); a rotation must re-issue every member's and worker's certificate and "
                               "reset etcd's users together, which an automatic single-secret rotation cannot: the "
                               "operator's procedure is in docs/security.md.")


def acknowledge_edge(edge: IConstruct) -> None:
    """The load balancer in front of the proxies, and the generated API key."""
    acknowledge(edge, "ELB2", "An internal Network Load Balancer passing TCP/TLS connections: access logs would "
                              "record only TLS handshakes; the proxy logs every request (containers log group) and "
                              "the VPC flow logs record every connection.")
    acknowledge(edge, "SMG4", "The proxy's generated API key is rotated by the operator (a new value in the secret, "
                              "then `dictl rollout` of the control hosts): an automatic rotation would need a Lambda "
                              "function and would lock out every client holding the old key at once.")


def acknowledge_image_cache(role: IConstruct, prefixes: list[str]) -> None:
    """The control host pulls from the repositories its pull-through cache rules create (components/image_cache.py),
    whose names exist only after the first pull."""
    stack = cdk.Stack.of(role)
    for prefix in prefixes:
        acknowledge(role, "IAM5", f"ECR creates the repositories under {prefix}/ on the first pull through the "
                                  "deployment's cache rule, named after the upstream ones; the statement covers that "
                                  "prefix only.",
                    f"Resource::arn:<AWS::Partition>:ecr:{stack.region}:<AWS::AccountId>:repository/{prefix}/*")
