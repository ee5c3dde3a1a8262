"""Client API key: loaded once at start from Secrets Manager or a file, checked as a Bearer token."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

# The JSON keys a secret may hold the key under (the console's key/value form); userdata/lib/secrets.sh reads the same ones.
SECRET_FIELDS = ("api_key", "apiKey", "API_KEY", "key")


class ApiKeyError(Exception):
    """The configured key cannot be loaded; the message names the source and the fix."""


def load_api_key(secret_id: str | None, key_file: str | None, region: str | None = None) -> str | None:
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise ApiKeyError(f"cannot read the API key file {key_file}: {exc.strerror or exc}; "
                              "fix the path in --api-key-file (DIPROXY_API_KEY_FILE)") from exc
        if not key:
            raise ApiKeyError(f"the API key file {key_file} is empty; write the key into it")
        return key
    if secret_id:
        return _key_from_secret_string(secret_id, _secret_string(secret_id, region))
    return None


def _secret_string(secret_id: str, region: str | None) -> str:
    import boto3  # only hosts that use a secret need AWS credentials and the SDK import cost
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = boto3.client("secretsmanager", region_name=region) if region else boto3.client("secretsmanager")
        return client.get_secret_value(SecretId=secret_id).get("SecretString", "").strip()
    except (BotoCoreError, ClientError) as exc:
        raise ApiKeyError(f"cannot read the API key secret '{secret_id}' from Secrets Manager: {exc}; check that "
                          "it exists in this region and that the instance role may read it "
                          "(proxy_api_key_secret in the environment's config)") from exc


def _key_from_secret_string(secret_id: str, secret: str) -> str:
    """A plain string, or a JSON object holding it under one of SECRET_FIELDS."""
    if secret.startswith("{"):
        try:
            data = json.loads(secret)
        except ValueError as exc:
            raise ApiKeyError(f"the API key secret '{secret_id}' starts with '{{' but is not JSON; "
                              "store the key as plain text or as {\"api_key\": \"...\"}") from exc
        secret = next((data[name] for name in SECRET_FIELDS if isinstance(data.get(name), str)), "")
        if not secret:
            raise ApiKeyError(f"the API key secret '{secret_id}' is JSON without any of the keys "
                              f"{', '.join(SECRET_FIELDS)}; store the key as plain text or as {{\"api_key\": \"...\"}}")
    if not secret:
        raise ApiKeyError(f"the API key secret '{secret_id}' is empty; put the key in it")
    return secret


def bearer_matches(header: str | None, api_key: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), api_key.encode())
