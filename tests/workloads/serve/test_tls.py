"""HTTPS on the shared HTTP layer: a certificate from files, reloaded when the kubelet rotates its
Secret, and every connection limit in force from the TCP accept, through the handshake.

The layer runs here under the small `other_app` (the layer both inference servers sit on); the
inference servers themselves answer tritonclient, requests and the openai client over HTTPS in
test_operator_pod.py (serve and llm) and in test_local_tls.py (`maas run`)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import ssl
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from maas_workloads import contract
from maas_workloads.serve.http.settings import (
    HTTP_FLAGS,
    HttpSettings,
    SettingsError,
    TlsSettings,
    http_settings,
    parse_options,
)
from maas_workloads.serve.http.tls import CertificateStore
from tests.workloads.serve import raw
from tests.workloads.serve.certificates import Authority, Pair, SecretVolume, client_context, served_serial
from tests.workloads.serve.conftest import ROOT, ServerProcess, free_port


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority()


def tls_settings(volume: SecretVolume) -> TlsSettings:
    return TlsSettings(cert_file=volume.cert_file, key_file=volume.key_file, reload_seconds=0.1)


def handshake_serial(server_context: ssl.SSLContext, authority: Authority) -> int:
    """The serial of the certificate `server_context` serves to a client verifying it, in memory."""
    to_client, to_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_client, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(authority).wrap_bio(to_client, from_client, server_hostname="localhost")
    server = server_context.wrap_bio(to_server, from_server, server_side=True)
    done: set[str] = set()
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if name not in done:
                try:
                    side.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if len(done) == 2:
            break
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def reloads(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("maas_http_tls_reloads_total", {"result": result}) or 0.0


# --- settings and the certificate store (no process) ------------------------------------------
def test_https_needs_both_files() -> None:
    def settings(env: dict[str, str]) -> HttpSettings:
        return http_settings(parse_options([], env, prog="t", description="", flags=HTTP_FLAGS), env)

    with pytest.raises(SettingsError, match=r"--tls-cert-file \(MAAS_TLS_CERT_FILE\) needs --tls-key-file"):
        settings({contract.ENV_TLS_CERT_FILE: "/etc/maas/tls/tls.crt"})
    with pytest.raises(SettingsError, match=r"--tls-key-file \(MAAS_TLS_KEY_FILE\) needs --tls-cert-file"):
        settings({contract.ENV_TLS_KEY_FILE: "/etc/maas/tls/tls.key"})
    with pytest.raises(SettingsError, match=r"MAAS_TLS_RELOAD_SECONDS\) must be at least 0.1"):
        settings(
            {contract.ENV_TLS_CERT_FILE: "a", contract.ENV_TLS_KEY_FILE: "b", contract.ENV_TLS_RELOAD_SECONDS: "0"}
        )
    assert settings({}).tls is None


def test_a_pair_that_cannot_load_stops_the_server_naming_the_flags(
    authority: Authority, tmp_path: pathlib.Path
) -> None:
    one, other = authority.issue(), authority.issue()
    volume = SecretVolume(tmp_path / "secret", one)
    missing = TlsSettings(tmp_path / "secret" / "nope.crt", volume.key_file, 1.0)
    with pytest.raises(SettingsError, match=r"--tls-cert-file and --tls-key-file .*nope.crt.*No such file"):
        CertificateStore(missing)
    volume.publish(Pair(cert=one.cert, key=other.key, serial=one.serial))  # a key of another certificate
    with pytest.raises(SettingsError, match="KEY_VALUES_MISMATCH"):
        CertificateStore(tls_settings(volume))
    # An encrypted key: refused with the reason, never a pass phrase prompt on the terminal.
    key = serialization.load_pem_private_key(one.key, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    volume.publish(Pair(cert=one.cert, key=encrypted, serial=one.serial))
    with pytest.raises(SettingsError, match="the private key is encrypted"):
        CertificateStore(tls_settings(volume))


def test_every_rotation_is_served_and_a_broken_one_is_not(authority: Authority, tmp_path: pathlib.Path) -> None:
    """Rotated three times as the kubelet does it (a watch on the files' inodes sees only the first)."""
    pairs = [authority.issue() for _ in range(4)]
    volume = SecretVolume(tmp_path / "secret", pairs[0])
    registry = CollectorRegistry()
    store = CertificateStore(tls_settings(volume), registry)
    assert handshake_serial(store.context, authority) == pairs[0].serial
    assert store.check() is False  # nothing changed: nothing loaded
    for pair in pairs[1:3]:
        volume.publish(pair)
        assert store.check() is True
        assert handshake_serial(store.context, authority) == pair.serial
    assert reloads(registry, "success") == 2

    # A certificate with another's key: refused, reported once however often it is checked,
    # and the previous certificate serves on.
    volume.publish(Pair(cert=pairs[3].cert, key=pairs[0].key, serial=pairs[3].serial))
    assert store.check() is False and store.check() is False
    assert reloads(registry, "failure") == 1
    assert handshake_serial(store.context, authority) == pairs[2].serial
    volume.publish(pairs[3])  # fixed
    assert store.check() is True
    assert handshake_serial(store.context, authority) == pairs[3].serial


# --- the layer over HTTPS, with a real process ------------------------------------------------
class HttpsApp(ServerProcess):
    """`other_app` on the shared layer, serving HTTPS from `volume`, its log in a file."""

    stop_timeout = 30.0

    def __init__(self, volume: SecretVolume, ca_file: pathlib.Path, log: pathlib.Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca_file = ca_file
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "workloads"), str(ROOT)]),
            contract.ENV_HOST: "127.0.0.1",
            contract.ENV_PORT: str(self.port),
            contract.ENV_DRAIN_DELAY_SECONDS: "0",
            contract.ENV_TLS_CERT_FILE: str(volume.cert_file),
            contract.ENV_TLS_KEY_FILE: str(volume.key_file),
            contract.ENV_TLS_RELOAD_SECONDS: "0.2",
            **env,
        }
        super().__init__([sys.executable, "-m", "tests.workloads.serve.other_app"], environment, log)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log()
            try:
                with self.client() as client:  # closed at once: a leaked keep-alive connection counts against the cap
                    if client.get("/health").status_code == 200:
                        break
            except httpx.TransportError:
                assert time.monotonic() < deadline, self.log()
                time.sleep(0.1)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca_file)), timeout=10)

    def metric(self, series: str, client: httpx.Client | None = None) -> float:
        """The series' value, scraped on `client`'s connection (default: a new one, closed after)."""
        with contextlib.ExitStack() as stack:
            scraper = client or stack.enter_context(self.client())
            for line in scraper.get("/metrics").text.splitlines():
                if line.startswith(series + " "):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
def secret(authority: Authority, tmp_path: pathlib.Path) -> SecretVolume:
    return SecretVolume(tmp_path / "secret", authority.issue())


@pytest.fixture
def ca_file(authority: Authority, tmp_path: pathlib.Path) -> pathlib.Path:
    return authority.write(tmp_path / "ca.crt")


@pytest.fixture
def https_app(secret: SecretVolume, ca_file: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[HttpsApp]:
    app = HttpsApp(secret, ca_file, tmp_path / "app.log", **{contract.ENV_HEADER_TIMEOUT_SECONDS: "1"})
    try:
        yield app
    finally:
        assert app.stop() == 0


def secure_connection(port: int, authority_pem: bytes) -> ssl.SSLSocket:
    context = ssl.create_default_context(cadata=authority_pem.decode())
    return context.wrap_socket(raw.connect(port, timeout=10), server_hostname="127.0.0.1")


def request_on(connection: ssl.SSLSocket) -> raw.Response:
    connection.sendall(raw.head("POST", "/echo", {"Content-Length": "2"}) + b"hi")
    response = raw.read_response(connection)  # type: ignore[arg-type]
    assert response is not None
    return response


def client_hello() -> bytes:
    """The first flight of a real TLS client, as bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def closed_by_server(connection: socket.socket, within: float = 20) -> bool:
    """Whether the server closes `connection` (EOF or reset) before `within` seconds pass."""
    connection.settimeout(within)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.slow
def test_a_rotated_certificate_serves_new_connections_while_open_ones_go_on(
    https_app: HttpsApp, secret: SecretVolume, authority: Authority
) -> None:
    first = served_serial(https_app.port, authority)
    kept = secure_connection(https_app.port, authority.pem)  # a keep-alive client from before the rotation
    assert request_on(kept).status == 200
    with https_app.client() as pooled:
        assert pooled.post("/echo", content=b"x").json() == {"messages": 1, "bytes": 1}

        second = authority.issue()
        secret.publish(second)
        deadline = time.monotonic() + 30
        while served_serial(https_app.port, authority) != second.serial:
            assert time.monotonic() < deadline, f"the new certificate is not served:\n{https_app.log()}"
            time.sleep(0.1)

        # Open connections keep their session: same socket, same certificate, still answered.
        assert request_on(kept).status == 200
        der = kept.getpeercert(binary_form=True)
        assert der is not None and x509.load_der_x509_certificate(der).serial_number == first
        assert pooled.post("/echo", content=b"xy").json() == {"messages": 1, "bytes": 2}
    kept.close()
    assert https_app.metric('maas_http_tls_reloads_total{result="success"}') == 1
    assert '"message":"certificate reloaded"' in https_app.log()


@pytest.mark.slow
def test_the_header_deadline_and_limits_hold_before_during_and_after_the_handshake(
    https_app: HttpsApp, authority: Authority
) -> None:
    before = https_app.metric('maas_http_rejected_total{reason="header_timeout"}')
    # TCP open, not a byte of a handshake; then half a client hello: both closed by the deadline (1 s).
    silent = raw.connect(https_app.port)
    halfway = raw.connect(https_app.port)
    hello = client_hello()
    halfway.sendall(hello[: len(hello) // 2])
    assert closed_by_server(silent) and closed_by_server(halfway)
    # A completed handshake, then a request head that never ends: 408, over TLS.
    stalled = secure_connection(https_app.port, authority.pem)
    stalled.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    late = raw.read_response(stalled)  # type: ignore[arg-type]
    assert late is not None and late.status == 408
    assert https_app.metric('maas_http_rejected_total{reason="header_timeout"}') == before + 3

    # Plain HTTP to the HTTPS port: no answer it could read, counted as a failed handshake.
    with raw.connect(https_app.port) as plain:
        plain.sendall(raw.head("GET", "/health"))
        assert closed_by_server(plain)
    assert https_app.metric('maas_http_rejected_total{reason="tls_handshake"}') == 1
    # Header size, after the handshake.
    with https_app.client() as client:
        assert client.get("/health", headers={"x-pad": "p" * 40_000}).status_code == 431


@pytest.mark.slow
def test_handshakes_that_never_finish_count_against_the_connection_cap(
    secret: SecretVolume, ca_file: pathlib.Path, authority: Authority, tmp_path: pathlib.Path
) -> None:
    settings = {contract.ENV_MAX_CONNECTIONS: "5", contract.ENV_HEADER_TIMEOUT_SECONDS: "120"}
    app = HttpsApp(secret, ca_file, tmp_path / "app.log", **settings)
    try:
        stalled = [raw.connect(app.port) for _ in range(4)]  # TCP only, never a handshake
        # Counted from the accept: with the scraper's own (one kept-alive connection, so that polling
        # adds no connection of its own), five open connections, the cap. The kernel completes a TCP
        # connect before the server accepts it, so the count may lag a moment.
        with app.client() as scraper:
            deadline = time.monotonic() + 10
            while (open_connections := app.metric("maas_http_connections", scraper)) < 5:
                assert time.monotonic() < deadline, open_connections
                time.sleep(0.05)
            assert open_connections == 5
            # One more: the connection waiting longest for its headers gives way (before the idle
            # scraper), and the client is served.
            assert served_serial(app.port, authority) > 0
            assert closed_by_server(stalled[0])
            assert not any(closed_by_server(connection, within=0.3) for connection in stalled[1:])
            assert app.metric('maas_http_rejected_total{reason="connection_limit"}', scraper) >= 1
        for connection in stalled:
            connection.close()
    finally:
        assert app.stop() == 0
