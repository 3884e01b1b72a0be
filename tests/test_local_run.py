"""`maas run`: the whole product on one machine — the operator's pod specs, the real launcher on
a local Ray cluster, the artifact, and the real inference server answering a request."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

from tests.local_run import FILES, maas_run

pytestmark = pytest.mark.slow


def test_train_then_serve_on_this_machine(
    local_run: tuple[pathlib.Path, subprocess.CompletedProcess[str]],
) -> None:
    tmp_path, result = local_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert "trained: file://" in result.stdout and "/run/volumes/store/tiny/model" in result.stdout
    # A real digit the model never trained on, answered with the predicted and the true label.
    pattern = r"held out from training: predicted (\d) \(score [-\d.e]+\), true label (\d): (\w+)"
    answer = re.search(pattern, result.stdout)
    assert answer is not None, result.stdout
    assert answer.group(3) == ("correct" if answer.group(1) == answer.group(2) else "wrong")
    assert "server drained and exited with 0" in result.stdout
    volume = tmp_path / "run" / "volumes" / "store" / "tiny"
    assert (volume / "model" / "manifest.json").exists()
    # The run ends by saying where everything is.
    assert f"artifact:    {volume / 'model'}" in result.stdout
    assert f"checkpoints: {volume / 'checkpoints'}" in result.stdout and any((volume / "checkpoints").iterdir())
    assert "tiny-head.log" in result.stdout.split("logs:", 1)[1]


def test_a_secret_missing_from_the_files_is_named_before_training(tmp_path: pathlib.Path) -> None:
    without_secret = FILES.split("---", 1)[1]
    result = maas_run(tmp_path, without_secret)
    assert result.returncode == 1
    assert "Secret token is referenced but not defined" in result.stderr
    assert "started" not in result.stdout
