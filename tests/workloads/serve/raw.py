"""HTTP/1.1 over a plain socket, for tests that need to control every byte and every pause."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def connect(port: int, timeout: float = 30) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def head(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    """A request line and headers, with the blank line that ends them."""
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: test",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(connection: socket.socket) -> Response | None:
    """The next response on `connection`, or None when the server closed it cleanly first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            if data:
                raise ConnectionError(f"the connection closed inside a response head: {data!r}")
            return None
        data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("the connection closed inside a response body")
        body += chunk
    return Response(int(status_line.split(" ", 2)[1]), headers, body)


def get(port: int, path: str) -> Response:
    """One request on a new connection, as a kubelet probe makes it."""
    with connect(port) as connection:
        connection.sendall(head("GET", path, {"Connection": "close"}))
        response = read_response(connection)
    assert response is not None, f"GET {path}: the server closed the connection without a response"
    return response
