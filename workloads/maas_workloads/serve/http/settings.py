"""Settings of the shared HTTP layer, and the flag/environment machinery every server's CLI uses.

Each setting is a command-line flag whose default is a `MAAS_*` environment variable (the
operator configures pods through the environment only). A server composes its own flags
with `HTTP_FLAGS`:

    options = parse_options(argv, environ, prog="...", description="...", flags=(*MY_FLAGS, *HTTP_FLAGS))
    http = http_settings(options, environ)

Every error names the flag and its variable (`--max-connections (MAAS_MAX_CONNECTIONS) must be
at least 1, got '0'`), so a bad pod spec exits 64 with a message the user can act on.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from maas_workloads import contract

_Number = TypeVar("_Number", int, float)


class SettingsError(Exception):
    """A flag or environment variable has a value the server cannot use."""


@dataclass(frozen=True)
class Flag:
    """A command-line flag and the environment variable that is its default."""

    name: str
    """`--max-connections`; the attribute is the name without dashes (`max_connections`)."""
    variable: str
    help: str

    @property
    def key(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")

    def __str__(self) -> str:
        return f"{self.name} ({self.variable})"


class Options:
    """Flag values (the flag, else its variable, else unset), read through typed accessors."""

    def __init__(self, values: Mapping[str, object], flags: Sequence[Flag]) -> None:
        self._values = values
        self._flags = {flag.key: flag for flag in flags}

    def text(self, key: str) -> str | None:
        """The value, or None when neither the flag nor its variable is set (or it is empty)."""
        value = self._values[key]
        return None if value in (None, "") else str(value)

    def number(self, key: str, kind: type[_Number], default: _Number, minimum: _Number) -> _Number:
        raw = self.text(key)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{self._flags[key]} must be a number, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{self._flags[key]} must be at least {minimum}, got {raw!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        raw = (self.text(key) or str(default)).lower()
        if raw not in ("true", "false", "1", "0"):
            raise SettingsError(f"{self._flags[key]} must be true or false, got {raw!r}")
        return raw in ("true", "1")

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        raw = (self.text(key) or default).lower()
        if raw not in choices:
            raise SettingsError(f"{self._flags[key]} must be one of {', '.join(choices)}, got {raw!r}")
        return raw


def argument_parser(
    environ: Mapping[str, str], *, prog: str, description: str, flags: Sequence[Flag]
) -> argparse.ArgumentParser:
    """A parser of `flags`, each defaulting to its variable in `environ` (more groups may be added)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for flag in flags:
        parser.add_argument(flag.name, default=environ.get(flag.variable), help=f"{flag.help} [env {flag.variable}]")
    return parser


def parse_options(
    argv: Sequence[str] | None, environ: Mapping[str, str], *, prog: str, description: str, flags: Sequence[Flag]
) -> Options:
    """Parse `argv` (None: sys.argv) with every flag defaulting to its variable in `environ`."""
    parser = argument_parser(environ, prog=prog, description=description, flags=flags)
    return Options(vars(parser.parse_args(argv)), flags)


@dataclass(frozen=True)
class HttpSettings:
    """What the shared HTTP layer enforces for every application it serves."""

    host: str
    port: int
    auth_token: str | None
    """Bearer token every path but the application's public ones needs; None: no authentication."""
    access_log: bool
    log_level: str
    max_request_bytes: int
    """Largest request body, also after gzip/deflate decoding (413 above it)."""
    max_buffered_bytes: int
    """Request bodies held in memory at once, all connections together (503 to the request that would
    pass it); at least `max_request_bytes`."""
    max_header_bytes: int
    """Largest request line plus headers (431 above it)."""
    header_timeout_seconds: float
    """From a connection's first byte of a request (or its accept) to the end of the headers (408, or close)."""
    body_timeout_seconds: float
    """From the end of the headers to the end of the body (408)."""
    keep_alive_timeout_seconds: float
    """An idle keep-alive connection is closed after this long without a new request."""
    max_connections: int
    """Open connections at most; see `protocol.Connections.make_room` for what happens at the cap."""
    drain_seconds: float
    """Bound on the whole drain after SIGTERM."""
    drain_delay_seconds: float
    """After SIGTERM, keep accepting new connections this long (readiness already says 503)."""
    tls: TlsSettings | None = None
    """HTTPS with this certificate; None: plain HTTP."""


@dataclass(frozen=True)
class TlsSettings:
    """The server's certificate and key files (PEM), and how often they are checked for a new pair."""

    cert_file: pathlib.Path
    key_file: pathlib.Path
    reload_seconds: float


HTTP_FLAGS: tuple[Flag, ...] = (
    Flag("--host", contract.ENV_HOST, "address to listen on (default: 0.0.0.0)"),
    Flag("--port", contract.ENV_PORT, f"port to listen on (default: {contract.SERVING_PORT})"),
    Flag("--log-level", contract.ENV_LOG_LEVEL, "debug, info, warning or error (default: info)"),
    Flag("--access-log", contract.ENV_ACCESS_LOG, "true or false: a JSON line per request (default: true)"),
    Flag(
        "--max-request-bytes",
        contract.ENV_MAX_REQUEST_BYTES,
        f"largest request body, also decompressed (default: {contract.DEFAULT_MAX_REQUEST_BYTES})",
    ),
    Flag(
        "--max-buffered-request-bytes",
        contract.ENV_MAX_BUFFERED_REQUEST_BYTES,
        "request bodies held in memory at once, all connections together "
        f"(default: {contract.BUFFERED_REQUESTS_PER_BUDGET} x --max-request-bytes)",
    ),
    Flag(
        "--max-header-bytes",
        contract.ENV_MAX_HEADER_BYTES,
        f"largest request line plus headers (default: {contract.DEFAULT_MAX_HEADER_BYTES})",
    ),
    Flag(
        "--header-timeout-seconds",
        contract.ENV_HEADER_TIMEOUT_SECONDS,
        f"deadline to receive a request's headers (default: {contract.DEFAULT_HEADER_TIMEOUT_SECONDS:g})",
    ),
    Flag(
        "--body-timeout-seconds",
        contract.ENV_BODY_TIMEOUT_SECONDS,
        f"deadline to receive a request's body after its headers (default: {contract.DEFAULT_BODY_TIMEOUT_SECONDS:g})",
    ),
    Flag(
        "--keep-alive-timeout-seconds",
        contract.ENV_KEEP_ALIVE_TIMEOUT_SECONDS,
        f"close idle keep-alive connections after (default: {contract.DEFAULT_KEEP_ALIVE_TIMEOUT_SECONDS:g})",
    ),
    Flag(
        "--max-connections",
        contract.ENV_MAX_CONNECTIONS,
        f"open connections at most (default: {contract.DEFAULT_MAX_CONNECTIONS})",
    ),
    Flag(
        "--drain-seconds",
        contract.ENV_DRAIN_SECONDS,
        f"bound on the drain after SIGTERM (default: {contract.DEFAULT_DRAIN_SECONDS:g})",
    ),
    Flag(
        "--drain-delay-seconds",
        contract.ENV_DRAIN_DELAY_SECONDS,
        f"keep accepting connections after SIGTERM (default: {contract.DEFAULT_DRAIN_DELAY_SECONDS:g})",
    ),
    Flag("--tls-cert-file", contract.ENV_TLS_CERT_FILE, "PEM certificate chain: serve HTTPS (with --tls-key-file)"),
    Flag("--tls-key-file", contract.ENV_TLS_KEY_FILE, "PEM private key of --tls-cert-file"),
    Flag(
        "--tls-reload-seconds",
        contract.ENV_TLS_RELOAD_SECONDS,
        f"check the two files for a new certificate this often (default: {contract.DEFAULT_TLS_RELOAD_SECONDS:g})",
    ),
)


def http_settings(options: Options, environ: Mapping[str, str]) -> HttpSettings:
    """The HTTP layer's settings from parsed HTTP_FLAGS, and the token from the environment only."""
    max_request_bytes = options.number("max_request_bytes", int, contract.DEFAULT_MAX_REQUEST_BYTES, 1024)
    return HttpSettings(
        host=options.text("host") or "0.0.0.0",  # a pod serves on every interface
        port=options.number("port", int, contract.SERVING_PORT, 0),
        auth_token=auth_token(environ),
        access_log=options.boolean("access_log", True),
        log_level=options.choice("log_level", ("debug", "info", "warning", "error"), "info"),
        max_request_bytes=max_request_bytes,
        max_buffered_bytes=_buffered_budget(options, max_request_bytes),
        max_header_bytes=options.number("max_header_bytes", int, contract.DEFAULT_MAX_HEADER_BYTES, 1024),
        header_timeout_seconds=options.number(
            "header_timeout_seconds", float, contract.DEFAULT_HEADER_TIMEOUT_SECONDS, 0.1
        ),
        body_timeout_seconds=options.number("body_timeout_seconds", float, contract.DEFAULT_BODY_TIMEOUT_SECONDS, 0.1),
        keep_alive_timeout_seconds=options.number(
            "keep_alive_timeout_seconds", float, contract.DEFAULT_KEEP_ALIVE_TIMEOUT_SECONDS, 0.1
        ),
        max_connections=options.number("max_connections", int, contract.DEFAULT_MAX_CONNECTIONS, 1),
        drain_seconds=options.number("drain_seconds", float, contract.DEFAULT_DRAIN_SECONDS, 0.0),
        drain_delay_seconds=options.number("drain_delay_seconds", float, contract.DEFAULT_DRAIN_DELAY_SECONDS, 0.0),
        tls=tls_settings(options),
    )


def _buffered_budget(options: Options, max_request_bytes: int) -> int:
    budget = options.number(
        "max_buffered_request_bytes", int, contract.BUFFERED_REQUESTS_PER_BUDGET * max_request_bytes, 1024
    )
    if budget < max_request_bytes:
        raise SettingsError(
            f"--max-buffered-request-bytes ({contract.ENV_MAX_BUFFERED_REQUEST_BYTES}) {budget} is less than "
            f"--max-request-bytes ({contract.ENV_MAX_REQUEST_BYTES}) {max_request_bytes}: one body of the largest "
            "size must fit; raise the first or lower the second"
        )
    return budget


def tls_settings(options: Options) -> TlsSettings | None:
    """HTTPS settings from parsed HTTP_FLAGS: both files or neither (SettingsError naming the missing one)."""
    cert, key = options.text("tls_cert_file"), options.text("tls_key_file")
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert-file", "--tls-key-file") if key is None else ("--tls-key-file", "--tls-cert-file")
        flags = {flag.name: flag for flag in HTTP_FLAGS}
        raise SettingsError(f"{flags[given]} needs {flags[missing]} too: HTTPS takes a certificate and its key")
    return TlsSettings(
        cert_file=pathlib.Path(cert),
        key_file=pathlib.Path(key),
        reload_seconds=options.number("tls_reload_seconds", float, contract.DEFAULT_TLS_RELOAD_SECONDS, 0.1),
    )


def auth_token(environ: Mapping[str, str]) -> str | None:
    """The bearer token from MAAS_AUTH_TOKEN, else from the file MAAS_AUTH_TOKEN_FILE names.

    Never a flag: a token on the command line would show in `ps` and in the pod spec.
    """
    token = environ.get(contract.ENV_AUTH_TOKEN, "").strip()
    if token:
        return token
    path = environ.get(contract.ENV_AUTH_TOKEN_FILE, "").strip()
    if not path:
        return None
    try:
        token = pathlib.Path(path).read_text().strip()
    except OSError as error:
        raise SettingsError(f"{contract.ENV_AUTH_TOKEN_FILE}={path} cannot be read: {error}") from None
    if not token:
        raise SettingsError(f"{contract.ENV_AUTH_TOKEN_FILE}={path} is empty; the server would accept no one")
    return token
