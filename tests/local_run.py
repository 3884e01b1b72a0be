"""`maas run` on a tiny TrainingJob and its ModelService, shared by the tests that need a real
training run (one run per test session: Ray and training dominate its cost)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
FILES = """
apiVersion: v1
kind: Secret
metadata: {name: token}
stringData: {token: local-secret}
---
apiVersion: maas.dev/v1alpha1
kind: TrainingJob
metadata: {name: tiny}
spec:
  trainer:
    model: mlp
    dataset: {uri: "sklearn:digits"}
    hyperparameters: {epochs: 2, batchSize: 128}
    modelOptions: {hiddenSize: 32, layers: 1}
  workers: {replicas: 1, resources: {cpu: "1"}}
  # Every optimized variant, measured on the validation split (checked in tests/workloads/variants).
  output: {pvc: {claimName: store, path: tiny/model}, variants: [int8, fp16, bf16, onnx], maxAccuracyDrop: 50}
  checkpoint: {pvc: {claimName: store, path: tiny/checkpoints}}
---
apiVersion: maas.dev/v1alpha1
kind: ModelService
metadata: {name: tiny}
spec:
  model: {trainingJobRef: {name: tiny}, variant: onnx}
  resources: {cpu: "1"}
  auth: {tokenSecretRef: {name: token, key: token}}
"""


def maas_run(tmp_path: pathlib.Path, text: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`maas run -f <text>` with its work directory under `tmp_path`; `timeout` in seconds."""
    manifest = tmp_path / "job.yaml"
    manifest.write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "workloads")])}
    command = [
        sys.executable,
        "-m",
        "maas_operator.cli",
        "run",
        "-f",
        str(manifest),
        "--workdir",
        str(tmp_path / "run"),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
