"""Bearer-token authentication, compared in constant time."""

from __future__ import annotations

import hmac


class BearerAuth:
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def allows(self, authorization: bytes | None) -> bool:
        if authorization is None:
            return False
        scheme, _, credentials = authorization.strip().partition(b" ")
        # The scheme is case-insensitive (RFC 9110); the token is compared without leaking its length early.
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)
