"""Errors a request can end in; each carries its HTTP status and a message for the caller."""

from __future__ import annotations


class ServeError(Exception):
    """A request that cannot be answered normally; the message goes to the client as is."""

    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequestError(ServeError):
    status = 400


class NotFoundError(ServeError):
    status = 404


class MethodNotAllowedError(ServeError):
    status = 405

    def __init__(self, method: str, path: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"{method} is not allowed on {path}", headers={"allow": ", ".join(allowed)})


class TooManyRequestsError(ServeError):
    status = 429

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after_seconds)})


class ModelFailedError(ServeError):
    """The model raised on input that passed validation: the server's problem, not the client's."""

    status = 500


class UnavailableError(ServeError):
    status = 503


class DeadlineExceededError(ServeError):
    status = 504
