"""`maas run` with a ModelService that sets `server.tls`: the kubernetes.io/tls Secret from the same
files is mounted as files only the user can read, the real server speaks HTTPS from them, and the
run's own client verifies it; a Secret without the two keys is refused before anything starts."""

from __future__ import annotations

import io
import pathlib
import stat
from typing import Any

import pytest

from maas_operator import local
from maas_operator.local_kubelet import RunError, local_kubelet, secrets_of
from tests.workloads.serve.certificates import Authority


def documents(model_dir: pathlib.Path, secret: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "digits-tls"}, "stringData": secret},
        {
            "apiVersion": "maas.dev/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": "digits"},
            "spec": {
                "model": {"uri": f"file://{model_dir}"},
                "resources": {"cpu": "1"},
                "server": {"tls": {"secretRef": {"name": "digits-tls"}}},
            },
        },
    ]


def test_a_tls_secret_without_its_key_is_refused_before_anything_starts(tmp_path: pathlib.Path) -> None:
    files = documents(tmp_path, {"tls.crt": "-----BEGIN CERTIFICATE-----"})
    with (
        local_kubelet(tmp_path / "run", secrets_of(files), io.StringIO()) as kubelet,
        pytest.raises(RunError, match=r"spec.server.tls.secretRef: Secret digits-tls has no tls.key"),
    ):
        local.preflight(kubelet, files[1])
    assert not kubelet.processes


@pytest.mark.slow
def test_maas_run_serves_https_from_the_secret_in_the_files(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    authority = Authority()
    pair = authority.issue(("digits.local.svc",))  # the cluster's name, not 127.0.0.1: the chain is what is checked
    secret = {"tls.crt": pair.cert.decode(), "tls.key": pair.key.decode(), "ca.crt": authority.pem.decode()}
    files = documents(digits_dir, secret)
    out = io.StringIO()
    with local_kubelet(tmp_path / "run", secrets_of(files), out) as kubelet:
        local.preflight(kubelet, files[1])
        served = local.serve(kubelet, files[1], {}, "unused")
    assert served["url"].startswith("https://127.0.0.1:"), out.getvalue()
    assert served["exitCode"] == 0 and served["outputs"], out.getvalue()
    key = tmp_path / "run" / "secrets" / "maas-tls" / "tls.key"
    assert key.read_text() == secret["tls.key"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600  # the private key is the user's alone
    assert '"tls":true' in (tmp_path / "run" / "digits-server.log").read_text()
