"""README.md stays in step with the API: every field a user can set or read is named there."""

from __future__ import annotations

import pathlib

import pytest
from pydantic import BaseModel

from maas_operator.api import modelservice as ms
from maas_operator.api import serving
from maas_operator.api.trainingjob import CheckpointSpec, RunPolicy, TrainingJobSpec, TrainingJobStatus, WorkerSpec
from maas_operator.status import kstatus
from maas_operator.status import modelservice as service_states
from maas_operator.status import trainingjob as states

README = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()


def wire_names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


@pytest.mark.parametrize(
    "model",
    [
        TrainingJobSpec,
        WorkerSpec,
        CheckpointSpec,
        RunPolicy,
        TrainingJobStatus,
        ms.ModelServiceSpec,
        ms.ModelSource,
        ms.AutoscalingSpec,
        serving.BatchingSpec,
        serving.ServerSpec,
        serving.TlsSpec,
        ms.RolloutSpec,
        ms.CanarySpec,
        ms.DisruptionSpec,
        ms.ModelServiceStatus,
        ms.CanaryStatus,
        ms.ServedModel,
    ],
)
def test_readme_names_every_field(model: type[BaseModel]) -> None:
    missing = [name for name in wire_names(model) if name not in README]
    assert not missing, f"README.md does not document {model.__name__}: {missing}"


def test_readme_names_every_condition() -> None:
    for condition in (
        states.CREATED,
        states.RUNNING,
        states.RESTARTING,
        states.SUSPENDED,
        states.STALLED,
        states.SUCCEEDED,
        states.FAILED,
        *service_states.CONDITION_TYPES,
        kstatus.RECONCILING,
        kstatus.STALLED,
    ):
        assert f"`{condition}`" in README, condition


def test_readme_starts_with_the_two_commands() -> None:
    block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make run", "make test"]
