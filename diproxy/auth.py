"""Client API key: loaded once at start from Secrets Manager or a file, checked as a Bearer token."""

from __future__ import annotations

import hmac
import json
from pathlib import Path


def load_api_key(secret_id: str | None, key_file: str | None, region: str | None = None) -> str | None:
    if key_file:
        return Path(key_file).read_text().strip() or None
    if secret_id:
        import boto3  # only hosts that use a secret need AWS credentials and the SDK import cost

        client = boto3.client("secretsmanager", region_name=region) if region else boto3.client("secretsmanager")
        secret = client.get_secret_value(SecretId=secret_id)["SecretString"].strip()
        return _key_from_secret_string(secret)
    return None


def _key_from_secret_string(secret: str) -> str:
    """A plain string, or a JSON object holding it as api_key (the console's key/value form)."""
    if secret.startswith("{"):
        data = json.loads(secret)
        for name in ("api_key", "apiKey", "API_KEY", "key"):
            if isinstance(data.get(name), str):
                return data[name]
        raise ValueError("secret JSON has no api_key field")
    return secret


def bearer_matches(header: str | None, api_key: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), api_key.encode())
