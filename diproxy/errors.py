"""OpenAI-style error responses ({"error": {"message", "type", "code"}}), and reading the ones workers send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web


def error_response(status: int, message: str, kind: str, code: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": code}}, status=status,
                             headers=headers)


class ClientFacingError(Exception):
    """Ends a request with the given OpenAI-style error before any byte of an answer went out."""

    def __init__(self, status: int, message: str, kind: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.kind, self.code, self.headers)


# vLLM's error types by HTTP status, for an error object that names only its type.
# vllm-project/vllm:vllm/entrypoints/openai/serving_engine.py create_error_response: "BadRequestError" 400 (default),
# "NotFoundError" 404, "InternalServerError" 500.
_STATUS_BY_TYPE = {"BadRequestError": 400, "NotFoundError": 404, "InternalServerError": 500,
                   "ServiceUnavailableError": 503}


@dataclass(frozen=True)
class WorkerError:
    """An error a worker reported in a body: its HTTP status (from `code`, else `type`) and its error object."""

    status: int
    error: dict[str, Any]

    @property
    def message(self) -> str:
        return str(self.error.get("message") or self.error.get("type") or "error without a message")

    def body(self) -> dict[str, Any]:
        return {"error": self.error}


def worker_error(payload: Any) -> WorkerError | None:
    """The error in a worker's JSON body or SSE event, or None if it is not one. vLLM has written three shapes over
    time (create_streaming_error_response in vllm/entrypoints/openai/serving_engine.py): {"error": {"message", "type",
    "param", "code": 400}}, the same with "object": "error" inside, and a bare {"object": "error", "message", ...}."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if not isinstance(error, dict):
        if payload.get("object") != "error":
            return None
        error = {k: v for k, v in payload.items() if k != "object"}
    code = error.get("code")
    if isinstance(code, int) and 400 <= code <= 599:
        status = code
    else:
        status = _STATUS_BY_TYPE.get(str(error.get("type")), 500)
    return WorkerError(status, error)
