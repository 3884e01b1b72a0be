"""HTTPS for the shared layer: the server's certificate, reloaded when its files change.

Kubernetes updates a mounted Secret by writing the new files into a fresh directory and then
swapping the `..data` symlink to it (one rename, atomic); `tls.crt` and `tls.key` are symlinks
through `..data`. A watch on the files' inodes (inotify on the two paths) sees the first swap at
most, since that swap deletes the inodes it watched. So every `reload_seconds` both paths are
stat'ed *through* the symlinks, and a different (device, inode, size, modification time) of
either means a new pair to load. A pair that does not load (a file half-written by something
other than the kubelet, a key that does not belong to the certificate) is logged once and tried
again at the next check, while the previous certificate keeps serving.

A new pair becomes a new `ssl.SSLContext`, never a change to the one in use: each connection's
handshake takes the context current at that moment (`protocol.GuardedProtocol`), so new
connections get the new certificate and open ones keep theirs, with nothing shared to lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter
from uvloop.loop import SSLProtocol  # type: ignore[attr-defined]  # uvloop ships no stub for its TLS layer

from maas_workloads.serve.http.settings import HttpSettings, SettingsError, TlsSettings

log = logging.getLogger(__name__)

ALPN_PROTOCOLS: Final = ["http/1.1"]
"""What this server speaks: a client offering h2 as well settles on HTTP/1.1 in the handshake."""

SHUTDOWN_SECONDS: Final = 2.0
"""How long a closing HTTPS connection waits for the client's close_notify before the socket
goes anyway (the event loop's default, 30 s, would let a silent client hold a slot that long);
as long as `protocol.LINGER_SECONDS`."""

Signature = tuple[tuple[int, int, int, int], ...]
"""(st_dev, st_ino, st_size, st_mtime_ns) of the certificate and of the key, through their symlinks."""


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A server-side context serving the pair; raises OSError (ssl.SSLError) when it cannot be loaded.

    TLS 1.2 at least (RFC 9325's floor); renegotiation off, so a client cannot make the server
    redo the costly half of a handshake on an open connection. An encrypted key is refused
    (OSError): without a password callback OpenSSL would prompt on the terminal.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    context.load_cert_chain(settings.cert_file, settings.key_file, password=_refuse_encrypted_key)
    return context


def _refuse_encrypted_key() -> bytes:
    """Called by OpenSSL for an encrypted key only (a kubernetes.io/tls Secret holds it in the clear)."""
    raise OSError("the private key is encrypted; a kubernetes.io/tls Secret holds it unencrypted")


class CertificateStore:
    """The current server context, loaded at start and again whenever the files change.

    Raises SettingsError at construction when the pair cannot be read or loaded, naming the
    flags and variables, so that a pod with a wrong Secret exits 64 with the reason.
    """

    def __init__(self, settings: TlsSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self._reloads = Counter(
            "maas_http_tls_reloads",
            "Loads of a changed certificate and key, by result (success, failure: the previous pair serves on).",
            ["result"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        self._flags = "--tls-cert-file and --tls-key-file (MAAS_TLS_CERT_FILE, MAAS_TLS_KEY_FILE)"
        try:
            self._signature = self._stat()
            self.context = server_context(settings)
        except OSError as error:
            raise SettingsError(
                f"{self._flags} must name a readable PEM certificate chain and its unencrypted private key: "
                f"{settings.cert_file}, {settings.key_file}: {_describe(error)}"
            ) from None
        self._failed: Signature | str | None = None
        """What the last failed load saw (a signature or an error), so each failure is reported once."""

    def _stat(self) -> Signature:
        stats = (os.stat(path) for path in (self.settings.cert_file, self.settings.key_file))
        return tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)

    def check(self) -> bool:
        """Load the pair again if either file changed since the last load; True when a new one serves."""
        try:
            signature = self._stat()
        except OSError as error:  # e.g. a file deleted by hand: keep serving, say so once
            self._failure(_describe(error), error)
            return False
        if signature == self._signature:
            return False
        try:
            context = server_context(self.settings)
        except OSError as error:
            self._failure(signature, error)
            return False
        self.context, self._signature, self._failed = context, signature, None
        self._reloads.labels("success").inc()
        log.info("certificate reloaded", extra={"cert_file": str(self.settings.cert_file)})
        return True

    def _failure(self, seen: Signature | str, error: OSError) -> None:
        if seen == self._failed:
            return
        self._failed = seen
        self._reloads.labels("failure").inc()
        log.warning(
            "the changed certificate cannot be loaded; the previous one serves on",
            extra={"cert_file": str(self.settings.cert_file), "reason": _describe(error)},
        )

    async def watch(self) -> None:
        """Check every `reload_seconds` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.reload_seconds)
            self.check()


def start_handshake(
    transport: asyncio.Transport,
    application: asyncio.Protocol,
    context: ssl.SSLContext,
    timeout_seconds: float,
    on_end: Callable[[asyncio.Future[None]], None],
) -> asyncio.BaseProtocol:
    """Hand a just-accepted plain `transport` to the event loop's TLS layer, returned; `application`
    then speaks HTTP over it.

    What `loop.start_tls` does, but before the caller's `connection_made` returns: uvloop starts
    reading the socket as soon as it returns, so the client's hello must already reach the TLS
    layer then, never the HTTP parser. The layer calls `application.connection_made` again, with
    the encrypted transport, when the handshake succeeds; `on_end` gets its waiter when the
    handshake ends either way (an exception: it failed). Must run on uvloop's event loop.
    """
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    waiter.add_done_callback(on_end)
    layer = SSLProtocol(
        loop,
        application,
        context,
        waiter,
        server_side=True,
        ssl_handshake_timeout=timeout_seconds,
        ssl_shutdown_timeout=SHUTDOWN_SECONDS,
    )
    transport.set_protocol(layer)
    layer.connection_made(transport)
    return layer  # type: ignore[no-any-return]


def certificate_store(settings: HttpSettings, registry: CollectorRegistry | None) -> CertificateStore | None:
    """The store for `settings.tls`, or None for plain HTTP; raises SettingsError as CertificateStore does."""
    return None if settings.tls is None else CertificateStore(settings.tls, registry)


def _describe(error: OSError) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return f"{error.reason} ({error.library or 'ssl'})"  # e.g. KEY_VALUES_MISMATCH (X509 certificate routines)
    return error.strerror or str(error)
