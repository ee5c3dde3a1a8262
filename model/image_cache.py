"""The control host's images through the deployment's own ECR pull-through cache: which upstream registries a cache
rule can mirror without credentials, the rule's repository prefix per deployment, and the reference a host pulls.

Amazon ECR, "Using pull through cache rules" (awsdocs/amazon-ecr-user-guide doc_source/pull-through-cache.md
@1e8d7c3f; https://docs.aws.amazon.com/AmazonECR/latest/userguide/pull-through-cache.html): a rule for "Amazon ECR
Public and Quay" needs no upstream credentials; an image is then pulled as
`aws_account_id.dkr.ecr.region.amazonaws.com/<prefix>/repository_name/image_name:tag`, and ECR creates the
repository and caches the image on the first pull. A digest works in place of the tag (the same page: "you can pull
the image using the image digest"), so the digest pinned upstream is the one pulled from the cache.

Rules are per registry (account and Region), so the prefix carries the deployment's name: two deployments in one
account get a rule each and never share cached repositories. Never imports aws_cdk: the node values use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Upstream:
    """One upstream registry a rule can mirror: its host (the rule's UpstreamRegistryUrl), CloudFormation's
    UpstreamRegistry value and the short word that ends the rule's prefix."""

    host: str
    registry: str
    word: str


# AWS::ECR::PullThroughCacheRule UpstreamRegistry values ("ecr-public", "quay") and URLs ("public.ecr.aws",
# "quay.io") as the ECR API lists them for CreatePullThroughCacheRule (upstreamRegistryUrl: "Amazon ECR Public
# (ecr-public) - public.ecr.aws ... Quay (quay) - quay.io").
UPSTREAMS: Mapping[str, Upstream] = {
    "quay.io": Upstream("quay.io", "quay", "quay"),
    "public.ecr.aws": Upstream("public.ecr.aws", "ecr-public", "ecrp"),
}
# CreatePullThroughCacheRule's ecrRepositoryPrefix: 2 to 30 characters (AWS::ECR::PullThroughCacheRule
# EcrRepositoryPrefix, "Minimum: 2, Maximum: 30"), lowercase words joined by single '.', '_' or '-'.
PREFIX_MAX = 30


def upstream_of(image: str) -> Upstream | None:
    """The upstream registry of an image reference, when a credential-free rule can mirror it."""
    host = image.split("/", 1)[0]
    return UPSTREAMS.get(host) if "/" in image else None


def prefix(deployment: str, upstream: Upstream) -> str:
    """The rule's repository prefix for one deployment and upstream, e.g. `di-prod-quay`. A deployment name is at
    most 20 characters of [a-z0-9-] (model/config.py), so the prefix is at most 28; runs of '-' fold into one, as ECR
    names take single separators."""
    words = [word for word in f"di-{deployment}-{upstream.word}".split("-") if word]
    value = "-".join(words)
    if not 2 <= len(value) <= PREFIX_MAX:
        raise ValueError(f"pull-through cache prefix {value!r} is not 2 to {PREFIX_MAX} characters")
    return value


def registry_host(account: str, region: str, url_suffix: str = "amazonaws.com") -> str:
    """The private registry of an account and Region: `ACCOUNT.dkr.ecr.REGION.amazonaws.com`."""
    return f"{account}.dkr.ecr.{region}.{url_suffix}"


def cached(image: str, registry: str, deployment: str) -> str:
    """The reference a host pulls for `image` through the deployment's cache, tag and digest kept as they are:
    quay.io/coreos/etcd:v3.5.17@sha256:... -> REGISTRY/di-NAME-quay/coreos/etcd:v3.5.17@sha256:...
    An image no rule can mirror (say docker.io, which needs credentials) is refused here, not at the host."""
    upstream = upstream_of(image)
    if upstream is None:
        raise ValueError(f"{image}: no credential-free ECR pull-through cache rule mirrors its registry "
                         f"(only {', '.join(UPSTREAMS)})")
    return f"{registry}/{prefix(deployment, upstream)}/{image.split('/', 1)[1]}"
