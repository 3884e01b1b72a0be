"""A local CA and server certificates (the `cryptography` package), and a Secret volume that rotates
them the way the kubelet does: files in a fresh `..<timestamp>` directory, then one rename of the
`..data` symlink, `tls.crt` and `tls.key` being symlinks through `..data`."""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import shutil
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Pair:
    """A certificate (PEM) and its private key (PEM), and the certificate's serial number."""

    cert: bytes
    key: bytes
    serial: int


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Authority:
    """A self-signed CA that issues server certificates for HOSTS."""

    def __init__(self, name: str = "maas test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._name = _name(name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: pathlib.Path) -> pathlib.Path:
        path.write_bytes(self.pem)
        return path

    def issue(self, hosts: tuple[str, ...] = HOSTS) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return Pair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), serial)


class SecretVolume:
    """A mounted `kubernetes.io/tls` Secret, updated as the kubelet's atomic writer does."""

    def __init__(self, directory: pathlib.Path, pair: Pair) -> None:
        self.directory = directory
        directory.mkdir(parents=True)
        self._generation = 0
        self.publish(pair)
        for key in ("tls.crt", "tls.key"):
            os.symlink(f"..data/{key}", directory / key)

    @property
    def cert_file(self) -> pathlib.Path:
        return self.directory / "tls.crt"

    @property
    def key_file(self) -> pathlib.Path:
        return self.directory / "tls.key"

    def publish(self, pair: Pair) -> None:
        """The new pair in a fresh directory, `..data` swapped to it by one rename, the old one deleted."""
        self._generation += 1
        fresh = self.directory / f"..2026_01_01_00_00_{self._generation:02d}.{os.getpid()}"
        fresh.mkdir()
        (fresh / "tls.crt").write_bytes(pair.cert)
        (fresh / "tls.key").write_bytes(pair.key)
        staged = self.directory / "..data_tmp"
        os.symlink(fresh.name, staged)
        os.rename(staged, self.directory / "..data")
        for old in self.directory.glob("..2026_*"):
            if old != fresh:
                shutil.rmtree(old)


def client_context(authority: Authority) -> ssl.SSLContext:
    """A client context that trusts only `authority` (hostname checked)."""
    return ssl.create_default_context(cadata=authority.pem.decode())


def served_serial(port: int, authority: Authority, host: str = "127.0.0.1") -> int:
    """The serial number of the certificate a new connection to `port` is served, verified against `authority`."""
    import socket

    with (
        socket.create_connection((host, port), timeout=10) as connection,
        client_context(authority).wrap_socket(connection, server_hostname=host) as secure,
    ):
        der = secure.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
