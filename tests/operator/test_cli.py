"""`maas render`: the objects the operator would create, without a cluster."""

from __future__ import annotations

import pathlib

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
