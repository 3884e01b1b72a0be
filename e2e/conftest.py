"""End-to-end tests against the cluster KUBECONFIG points to (kind, k3d, a real one).

    make e2e                                    # CRDs, chart, CEL rules, invalid specs
    MAAS_E2E_IMAGE=<workloads image> make e2e   # also a full training run

Skipped, with the reason, when no cluster is reachable. When one is, the suite starts by
installing the CRDs and the Helm chart, and stops at once, quoting the API server, if either
is refused: nothing else can be true of a cluster that refused them.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CRDS = ("trainingjobs.maas.dev", "modelservices.maas.dev")
RELEASE = "maas-e2e"
RELEASE_NAMESPACE = "maas-e2e-system"


def kubectl_binary() -> str | None:
    return shutil.which("kubectl")


def helm_binary() -> str | None:
    local = pathlib.Path(sys.executable).parent / "helm"
    return shutil.which("helm") or (str(local) if local.exists() else None)


def cluster_reachable() -> tuple[bool, str]:
    binary = kubectl_binary()
    if binary is None:
        return False, "kubectl is not installed"
    probe = subprocess.run([binary, "version", "--request-timeout=5s"], check=False, capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"no reachable cluster (KUBECONFIG): {probe.stderr.strip().splitlines()[-1:]}"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reachable, why = cluster_reachable()
    if not reachable:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=f"e2e skipped: {why}"))


def must(step: str, *command: str) -> None:
    """Run an install step; a refusal ends the whole session with the API server's own words."""
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.exit(f"e2e: {step} was refused:\n{result.stderr.strip() or result.stdout.strip()}", returncode=1)


@pytest.fixture(scope="session", autouse=True)
def installed() -> Iterator[None]:
    """The CRDs (Established, with every printer column and CEL rule) and the chart, before any test."""
    kubectl, helm = kubectl_binary(), helm_binary()
    if kubectl is None or helm is None:
        pytest.exit("e2e: kubectl and helm are needed (`make install` puts helm in .venv/bin)", returncode=1)
    must("kubectl apply of crds/", kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for crd in CRDS:
        must(f"CRD {crd}", kubectl, "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    # Every object of the chart must be admitted; the operator's image need not run here.
    must(
        "helm install of charts/maas-operator",
        helm,
        "upgrade",
        "--install",
        RELEASE,
        str(REPO / "charts" / "maas-operator"),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--set",
        f"watchNamespaces={{{RELEASE_NAMESPACE}}}",
    )
    yield
    subprocess.run([helm, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE], check=False, capture_output=True)
