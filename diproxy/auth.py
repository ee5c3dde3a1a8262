"""Client API key: loaded at start from Secrets Manager or a file, re-read while the proxy runs (ApiKeySource), and
checked as a Bearer token."""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

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


class ApiKeySource:
    """The key in force and where it comes from. `reload()` re-reads it: a rotated secret or a rewritten file takes
    effect for the next request, while requests already admitted (streams included) go on, since the key is checked
    once, when a request arrives. A source that cannot be read keeps the key in force: a passing Secrets Manager error
    must not lock every client out, and the error is logged."""

    def __init__(self, key: str | None, secret_id: str | None = None, key_file: str | None = None,
                 region: str | None = None) -> None:
        self.key = key
        self._secret_id, self._key_file, self._region = secret_id, key_file, region
        self.reloads = 0

    @property
    def reloadable(self) -> bool:
        return bool(self._secret_id or self._key_file)

    def reload(self) -> bool:
        """Read the source again (blocking: run it off the event loop); True when the key changed."""
        try:
            key = load_api_key(self._secret_id, self._key_file, self._region)
        except ApiKeyError as exc:
            log.error("API key not reloaded, the previous one stays in force: %s", exc)
            return False
        finally:
            self.reloads += 1
        if key == self.key:
            return False
        self.key = key
        log.info("API key reloaded: a new key is in force")
        return True
