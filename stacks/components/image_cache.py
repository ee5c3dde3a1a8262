"""The deployment's ECR pull-through cache rules: the control host pulls etcd (quay.io) and the legacy proxy's image
(public.ecr.aws) from its own account's private registry, over the VPC's ECR endpoints, never from the upstreams.

Amazon ECR, "Using pull through cache rules" (awsdocs/amazon-ecr-user-guide doc_source/pull-through-cache.md
@1e8d7c3f; https://docs.aws.amazon.com/AmazonECR/latest/userguide/pull-through-cache.html):
- the first pull of an image creates its repository under the rule's prefix and imports the image; that pull needs
  `ecr:BatchImportUpstreamImage`, and `ecr:CreateRepository` "if the repository storing the cached images doesn't
  already exist" (section "Required IAM permissions"), besides the ordinary pull permissions;
- "When an image is pulled using a pull through cache rule for the first time, if you've configured Amazon ECR to use
  an interface VPC endpoint using AWS PrivateLink then you need to create a public subnet in the same VPC, with a NAT
  gateway ... Subsequent image pulls don't require this." The first control host of a deployment therefore still
  needs its NAT route (network.nat_gateway, the default); replacements pull what the cache holds.
- Deleting a rule "doesn't have any effect on the repositories or images that were cached": the cached repositories
  outlive the stack (docs/control-plane.md "Booting without the internet").
A rule is registry-wide: its prefix carries the deployment's name (model/image_cache.py prefix); a rule with that
prefix that already exists in the account and Region fails this stack's create, naming the rule.
"""

from __future__ import annotations

from typing import Iterable

import aws_cdk as cdk
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from constructs import Construct

from model import image_cache, naming

# docker pull's calls to ECR once logged in: the image manifest (BatchGetImage) and each layer's download URL
# (GetDownloadUrlForLayer; the layers themselves come from S3, through the VPC's S3 gateway endpoint); the login needs
# ecr:GetAuthorizationToken (doc_source/docker-pull-ecr-image.md@04735f3f). Plus the two actions a first pull through
# a cache rule performs (pull-through-cache.md "Required IAM permissions").
PULL_ACTIONS = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")
CACHE_ACTIONS = ("ecr:BatchImportUpstreamImage", "ecr:CreateRepository")


class ImageCache(Construct):
    """One pull-through cache rule per upstream registry the images come from.

    Exposes ``registry`` (ACCOUNT.dkr.ecr.REGION.amazonaws.com) and ``prefixes`` (upstream host -> rule prefix).
    """

    def __init__(self, scope: Construct, construct_id: str, *, deployment: str, images: Iterable[str]) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        # amazonaws.com, not the partition's URL suffix: pull-through cache rules are not offered in the China or
        # GovCloud Regions (pull-through-cache.md, "Considerations").
        self.registry = image_cache.registry_host(stack.account, stack.region)
        self.prefixes: dict[str, str] = {}
        for image in images:
            upstream = image_cache.upstream_of(image)
            if upstream is None or upstream.host in self.prefixes:
                continue
            prefix = image_cache.prefix(deployment, upstream)
            ecr.CfnPullThroughCacheRule(
                self, naming.pascal(upstream.registry), ecr_repository_prefix=prefix,
                upstream_registry=upstream.registry, upstream_registry_url=upstream.host)
            self.prefixes[upstream.host] = prefix

    def repository_arns(self) -> list[str]:
        """Every repository the rules create: PREFIX/* per rule."""
        stack = cdk.Stack.of(self)
        return [stack.format_arn(service="ecr", resource="repository", resource_name=f"{prefix}/*")
                for prefix in self.prefixes.values()]

    def grant_pull(self, role: iam.IRole) -> None:
        """Pull (and, on the first pull, import) exactly the cache's repositories. GetAuthorizationToken has no
        resource type (Service Authorization Reference, Amazon ECR), hence "*"."""
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=[*PULL_ACTIONS, *CACHE_ACTIONS], resources=self.repository_arns()))
        role.add_to_principal_policy(iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]))
