"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status."""

from __future__ import annotations

from typing import Final

import orjson

# OpenAI's error types by status (its API reference, "Error codes"); the `openai` client raises
# BadRequestError, AuthenticationError, NotFoundError, RateLimitError... from the status alone.
_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class OpenAIError(Exception):
    """A request that ends in an error response; the message goes to the client as is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def document(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.document())


def http_error_body(status: int, message: str) -> bytes:
    """The shared HTTP layer's own errors (401, 408, 413, 431, ...) in OpenAI's shape."""
    return OpenAIError(status, message, code="invalid_api_key" if status == 401 else None).body()
