"""`maas run` on a language model: trained with FSDP on two local workers, served through the
operator's own LLM pod (fetch-and-verify init container, built-in engine), asked a held-out
question through the OpenAI API, with the lines to ask more."""

from __future__ import annotations

import pathlib
import shlex

import pytest

from tests.local_run import maas_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FILES = """
apiVersion: v1
kind: Secret
metadata: {name: token}
stringData: {token: local-secret}
---
apiVersion: maas.dev/v1alpha1
kind: TrainingJob
metadata: {name: adder}
spec:
  trainer:
    causalLM: {architecture: {size: tiny}, parallelism: fsdp, sequenceLength: 64}
    dataset: {uri: "synthetic:arithmetic?samples=600"}
    hyperparameters: {batchSize: 8, maxSteps: 12, learningRate: 0.003, optimizer: adamw}
  workers: {replicas: 2, resources: {cpu: "1"}}
  output: {pvc: {claimName: store, path: adder/model}}
---
apiVersion: maas.dev/v1alpha1
kind: ModelService
metadata: {name: adder}
spec:
  model: {trainingJobRef: {name: adder}}
  resources: {cpu: "1"}
  generation: {maxModelLen: 512, maxNumSeqs: 4}
  auth: {tokenSecretRef: {name: token, key: token}}
"""


def test_train_a_language_model_then_ask_it_through_the_openai_api(tmp_path: pathlib.Path) -> None:
    result = maas_run(tmp_path, FILES, timeout=580)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "step 12/12" in out and "val_perplexity=" in out and "tokens_per_second=" in out  # plain lines: no TTY
    assert "started adder-fetch-model" in out and "(OpenAI API)" in out
    question = next(line for line in out.splitlines() if line.strip().startswith("Q: What is "))
    answer = out.splitlines()[out.splitlines().index(question) + 1]
    assert answer.strip().startswith("A: ") and len(answer.strip()) > len("A: ")
    curl = next(line for line in out.splitlines() if line.strip().startswith("curl "))
    assert "Authorization: Bearer local-secret" in shlex.split(curl)
    assert "from openai import OpenAI" in out and "server drained and exited with 0" in out
