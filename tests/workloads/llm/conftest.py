"""A tiny Llama artifact built once per session, and the real server started on it."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.workloads.llm import artifacts
from tests.workloads.serve.conftest import Server

TOKEN = "llm-test-token"
MODEL = "tiny-llama"


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("llm") / "tiny-llama"
    artifacts.llama_artifact(directory)
    return directory


def start(model: pathlib.Path | str, log: pathlib.Path, **env: str) -> Server:
    server = Server(
        str(model),
        log,
        {"MAAS_MODEL_NAME": MODEL, "MAAS_AUTH_TOKEN": TOKEN, "MAAS_ACCESS_LOG": "false", **env},
    )
    server.wait_ready()
    return server


@pytest.fixture(scope="session")
def llm_server(llama_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(llama_dir, tmp_path_factory.mktemp("logs") / "llm.log")
    try:
        yield server
    finally:
        server.stop()
