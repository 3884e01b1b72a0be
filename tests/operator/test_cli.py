"""`maas render`: the objects the operator would create, without a cluster."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from maas_operator.cli import main

REPO = pathlib.Path(__file__).resolve().parents[2]


def render(path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, object]], str]:
    code = main(["render", "-f", str(path)])
    out, err = capsys.readouterr()
    return code, [d for d in yaml.safe_load_all(out) if d], err


def test_render_trainingjob_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, objects, _ = render(REPO / "examples" / "trainingjob.yaml", capsys)
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]  # type: ignore[index]
    assert code == 0
    assert names == [
        ("NetworkPolicy", "digits-ray"),
        ("Service", "digits-head"),
        ("Pod", "digits-head"),
        ("Pod", "digits-worker-0"),
        ("Pod", "digits-worker-1"),
    ]


def test_render_modelservice_with_a_uri(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "ms.yaml"
    manifest.write_text(
        "apiVersion: maas.dev/v1alpha1\nkind: ModelService\nmetadata: {name: iris}\n"
        "spec: {model: {uri: 's3://models/iris'}, replicas: 3}\n"
    )
    code, objects, _ = render(manifest, capsys)
    assert code == 0
    assert sorted(o["kind"] for o in objects) == ["Deployment", "PodDisruptionBudget", "Service"]  # type: ignore[type-var]


def test_render_modelservice_waits_for_its_trainingjob(capsys: pytest.CaptureFixture[str]) -> None:
    code, objects, err = render(REPO / "examples" / "modelservice.yaml", capsys)
    assert code == 0 and objects == []
    assert "nothing to create yet" in err and "TrainingJob digits" in err


def test_render_names_the_bad_field(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: maas.dev/v1alpha1\nkind: ModelService\nmetadata: {name: iris}\n"
        "spec: {model: {uri: 's3://models/iris'}, replicas: 3, autoscaling: {maxReplicas: 4}}\n"
    )
    code, _, err = render(manifest, capsys)
    assert code == 2 and "set replicas or autoscaling, not both" in err


MS_WITH = "apiVersion: maas.dev/v1alpha1\nkind: ModelService\nmetadata: {{name: {name}}}\nspec: {spec}\n"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            MS_WITH.format(name="digits.v2", spec="{model: {uri: 's3://models/iris'}}"),
            "metadata.name must be a DNS-1035",
        ),
        (MS_WITH.format(name="1digits", spec="{model: {uri: 's3://models/iris'}}"), "metadata.name must be a DNS-1035"),
        (
            MS_WITH.format(name="iris", spec="{model: {uri: 's3://models/iris'}, resources: {cpu: -1}}"),
            "spec.resources.cpu: must be a positive",
        ),
        (
            MS_WITH.format(name="iris", spec="{model: {uri: 's3://models/iris'}, resources: {gpu: '1'}}"),
            "spec.resources.gpu",
        ),
        (
            MS_WITH.format(name="iris", spec="{model: {uri: 's3://models/iris'}, labels: {maas.dev/x: y}}"),
            "are set by the operator",
        ),
        (MS_WITH.format(name="iris", spec="[1, 2]"), "spec: Required value"),
        ("kind: ModelService\nmetadata: {name: [\n", "cannot read"),
    ],
)
def test_render_refuses_bad_input_cleanly(
    text: str, says: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(text)
    code, _, err = render(manifest, capsys)
    assert code == 2 and says in err and "Traceback" not in err, err


def test_render_any_cpu_quantity(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "ms.yaml"
    manifest.write_text(MS_WITH.format(name="iris", spec="{model: {uri: 's3://models/iris'}, resources: {cpu: 2G}}"))
    code, objects, _ = render(manifest, capsys)
    deployment: Any = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert code == 0 and env["OMP_NUM_THREADS"] == "2000000000"
