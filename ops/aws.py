"""AWS clients for `dictl`, made from one injected boto3 session on first use (never at import time)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping


class Clients:
    """One client per service, created lazily; tests pass fakes for services moto does not cover."""

    def __init__(self, session: Any, overrides: Mapping[str, Any] | None = None) -> None:
        self.session = session
        self._clients: dict[str, Any] = dict(overrides or {})

    def get(self, service: str, region: str | None = None) -> Any:
        """The client for `service` (boto3 name, e.g. "ssm"), in the session's region unless `region` is given (for
        services answered in one region only, such as the Price List API)."""
        if service not in self._clients:
            self._clients[service] = self.session.client(service, **({"region_name": region} if region else {}))
        return self._clients[service]

    @property
    def region(self) -> str:
        """Region the session talks to."""
        return self.session.region_name or ""

    ssm = property(lambda self: self.get("ssm"))
    ec2 = property(lambda self: self.get("ec2"))
    s3 = property(lambda self: self.get("s3"))
    cloudformation = property(lambda self: self.get("cloudformation"))
    autoscaling = property(lambda self: self.get("autoscaling"))
    service_quotas = property(lambda self: self.get("service-quotas"))
    secretsmanager = property(lambda self: self.get("secretsmanager"))


def objects(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every object under PREFIX (ListObjectsV2 pages by ContinuationToken, which boto3's paginator follows)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def pages(call: Callable[..., Mapping[str, Any]], *, token_key: str = "NextToken",
          **kwargs: Any) -> Iterator[Mapping[str, Any]]:
    """Follow the page token by hand: works the same on real clients, Stubber-backed ones and test fakes. Most APIs
    name it NextToken; CloudWatch Logs and ECR nextToken, the Resource Groups Tagging API PaginationToken."""
    token: str | None = None
    while True:
        response = call(**kwargs, **({token_key: token} if token else {}))
        yield response
        token = response.get(token_key)
        if not token:
            return
