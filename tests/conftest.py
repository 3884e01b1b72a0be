"""Fixtures shared across the test packages."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from tests.local_run import FILES, maas_run


@pytest.fixture(scope="session")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, subprocess.CompletedProcess[str]]:
    """One `maas run` of FILES: its work directory and the finished process (output captured)."""
    workdir = tmp_path_factory.mktemp("local-run")
    return workdir, maas_run(workdir, FILES)
