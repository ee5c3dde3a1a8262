"""OpenAI-style error responses ({"error": {"message", "type", "code"}})."""

from __future__ import annotations

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
