"""End-to-end tests against the cluster KUBECONFIG points to (kind, k3d, a real one).

    make e2e                                    # CRDs, CEL rules, invalid specs
    MAAS_E2E_IMAGE=<workloads image> make e2e   # also a full training run

Skipped, with the reason, when no cluster is reachable.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


def kubectl_binary() -> str | None:
    return shutil.which("kubectl")


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
