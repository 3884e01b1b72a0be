"""HTTPS for a ModelService's pods (`spec.server.tls`): pure pieces the serving builders put together.

The user's `kubernetes.io/tls` Secret is mounted, never read: the operator only names it. Both
engines read the certificate from the mount; the kubelet rewrites the files when the Secret
changes, and the builtin server reloads them (vLLM: see `vllm_args`).
"""

from __future__ import annotations

from typing import Final

from maas_operator.api.modelservice import ModelServiceSpec
from maas_operator.builders.pods import OperatorVolume
from maas_workloads import contract

VOLUME: Final = "maas-tls"
SECRET_FILE_MODE: Final = 0o440
"""Readable by the pod's group (fsGroup) only: the private key is no one else's business."""
CERT_FILE: Final = f"{contract.TLS_MOUNT}/{contract.TLS_CERT_KEY}"
KEY_FILE: Final = f"{contract.TLS_MOUNT}/{contract.TLS_KEY_KEY}"
HTTP_PORT: Final = 80
HTTPS_PORT: Final = 443


def enabled(spec: ModelServiceSpec) -> bool:
    return spec.server.tls is not None


def port_name(spec: ModelServiceSpec) -> str:
    """The serving port's name on the container and the Service; a PodMonitor picks its scheme by it."""
    return contract.SERVING_TLS_PORT_NAME if enabled(spec) else contract.SERVING_PORT_NAME


def http_get(spec: ModelServiceSpec, path: str) -> dict[str, str]:
    """A probe's httpGet on the serving port. With tls the kubelet speaks HTTPS, verifying no
    certificate (as for every HTTPS probe); without, the scheme is left to its default, HTTP, so
    that the pod template of a plain server stays as it was."""
    action = {"path": path, "port": port_name(spec)}
    return {**action, "scheme": "HTTPS"} if enabled(spec) else action


def scrape_annotations(spec: ModelServiceSpec) -> dict[str, str]:
    """`prometheus.io/scheme` for annotation-driven scrape configs, with tls only (http is their default)."""
    return {"prometheus.io/scheme": "https"} if enabled(spec) else {}


def service_port(spec: ModelServiceSpec) -> int:
    return HTTPS_PORT if enabled(spec) else HTTP_PORT


def volume(spec: ModelServiceSpec) -> list[OperatorVolume]:
    """The Secret, mounted read-only at contract.TLS_MOUNT; nothing without tls."""
    if spec.server.tls is None:
        return []
    secret = {"secretName": spec.server.tls.secret_ref.name, "defaultMode": SECRET_FILE_MODE}
    return [OperatorVolume({"name": VOLUME, "secret": secret}, contract.TLS_MOUNT, {"readOnly": True})]


def server_env(spec: ModelServiceSpec) -> dict[str, str]:
    """The builtin server's variables: the two files (it reloads them when they change)."""
    if not enabled(spec):
        return {}
    return {contract.ENV_TLS_CERT_FILE: CERT_FILE, contract.ENV_TLS_KEY_FILE: KEY_FILE}


def vllm_args(spec: ModelServiceSpec) -> list[str]:
    """vLLM's own flags for the same files.

    `--enable-ssl-refresh` makes vLLM reload them on a change its `SSLCertRefresher` sees
    through `watchfiles` (inotify on the two files); the kubelet's update deletes the files that
    watch follows, so vLLM picks up the first renewal only (README, HTTPS).
    """
    if not enabled(spec):
        return []
    return ["--ssl-certfile", CERT_FILE, "--ssl-keyfile", KEY_FILE, "--enable-ssl-refresh"]
