"""Bad input, limits and errors over plain HTTP: a client mistake is a 4xx naming the problem."""

from __future__ import annotations

import asyncio
import gzip
import pathlib
import time
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest

from tests.workloads.serve.conftest import Server

pytestmark = pytest.mark.slow


def _infer(pixels: list[list[float]] | None = None, **changes: object) -> dict[str, object]:
    pixels = pixels or [[0.0] * 64]
    tensor: dict[str, object] = {"name": "pixels", "datatype": "FP32", "shape": [len(pixels), 64], "data": pixels}
    tensor.update(changes)
    return {"inputs": [tensor]}


@pytest.fixture
def http(digits_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=digits_server.url, timeout=30) as client:
        yield client


def test_health_and_server_metadata(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    metadata = http.get("/v2").json()
    assert metadata["name"] == "maas-inference-server"
    assert "binary_tensor_data" in metadata["extensions"]
    assert http.get("/v1/models").json() == {"models": ["digits"]}
    assert http.get("/v1/models/digits").json() == {"name": "digits", "ready": True}


def test_no_content_type_needed_and_nested_data(http: httpx.Client) -> None:
    nested = _infer([[0.0] * 64, [16.0] * 64])
    flat = _infer(shape=[2, 64], data=[0.0] * 64 + [16.0] * 64)
    first = http.post("/v2/models/digits/infer", content=orjson.dumps(nested))
    second = http.post("/v2/models/digits/infer", content=orjson.dumps(flat), headers={"content-type": "text/plain"})
    assert first.status_code == second.status_code == 200
    assert first.json()["outputs"] == second.json()["outputs"]
    assert first.json()["outputs"][0]["shape"] == [2, 10]


def test_binary_output_for_json_input(http: httpx.Client) -> None:
    request = {**_infer(), "parameters": {"binary_data_output": True}}
    response = http.post("/v2/models/digits/infer", json=request)
    assert response.status_code == 200
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 40
    assert np.frombuffer(response.content[length:], dtype="<f4").shape == (10,)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (orjson.dumps({"inputs": []}), "non-empty 'inputs'"),
        (orjson.dumps(_infer(name="image")), "no input 'image'"),
        (orjson.dumps(_infer(datatype="FP64")), "datatype FP64, the model expects FP32"),
        (orjson.dumps(_infer(shape=[1, 63])), "input 'pixels' has shape [1, 63]"),
        (orjson.dumps(_infer(shape=[2, 64], data=[0.0] * 64)), "input 'pixels': data has 64 elements"),
        (orjson.dumps(_infer(shape=[2, 64])), "data is nested as [1, 64], but 'shape' says [2, 64]"),
        (orjson.dumps(_infer(data=["a"] * 64)), "input 'pixels'"),
        (orjson.dumps(_infer(data=None)), "input 'pixels'"),
        (orjson.dumps({**_infer(), "outputs": [{"name": "probabilities"}]}), "no output 'probabilities'"),
        (orjson.dumps({**_infer(), "parameters": {"timeout": -1}}), "timeout"),
    ],
)
def test_bad_requests_are_400_naming_the_problem(http: httpx.Client, body: bytes, fragment: str) -> None:
    response = http.post("/v2/models/digits/infer", content=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_bad_binary_framing(http: httpx.Client) -> None:
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 256}}
    header = orjson.dumps({"inputs": [tensor]})
    good = header + np.zeros(64, dtype="<f4").tobytes()
    ok = http.post(
        "/v2/models/digits/infer", content=good, headers={"inference-header-content-length": str(len(header))}
    )
    assert ok.status_code == 200, ok.text
    cases = {
        good[:-4]: (str(len(header)), "runs past the end"),
        good + b"xx": (str(len(header)), "no input claims them"),
        good: ("banana", "not an integer"),
        good[: len(header)]: (str(len(header) + 10), "outside the body"),
    }
    for body, (length, fragment) in cases.items():
        response = http.post(
            "/v2/models/digits/infer", content=body, headers={"inference-header-content-length": length}
        )
        assert response.status_code == 400, response.text
        assert fragment in response.json()["error"]


def test_unknown_models_routes_and_methods(http: httpx.Client) -> None:
    assert http.post("/v2/models/other/infer", json=_infer()).status_code == 404
    assert "serves 'digits'" in http.get("/v2/models/other").json()["error"]
    assert http.get("/v2/models/digits/versions/2").status_code == 404
    assert http.post("/v1/models/other:predict", json={"instances": [[0] * 64]}).status_code == 404
    assert http.get("/v3/anything").status_code == 404
    not_allowed = http.get("/v2/models/digits/infer")
    assert not_allowed.status_code == 405
    assert not_allowed.headers["allow"] == "POST"


def test_v1_bad_instances(http: httpx.Client) -> None:
    assert http.post("/v1/models/digits:predict", json={"instances": []}).status_code == 400
    ragged = http.post("/v1/models/digits:predict", json={"instances": [[0] * 64, [0] * 3]})
    assert ragged.status_code == 400
    assert "pixels" in ragged.json()["error"]


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    # The digits server keeps the default limit; declare a bigger body than it takes.
    huge = b"x" * (64 * 1024 * 1024 + 1)
    response = http.post("/v2/models/digits/infer", content=huge)
    assert response.status_code == 413
    assert http.get("/v2/health/ready").status_code == 200


def test_content_encodings(http: httpx.Client) -> None:
    gzip_bomb = gzip.compress(b" " * (64 * 1024 * 1024 + 10))
    too_big = http.post("/v2/models/digits/infer", content=gzip_bomb, headers={"content-encoding": "gzip"})
    assert too_big.status_code == 413
    assert "decompresses to more than" in too_big.json()["error"]
    corrupt = http.post("/v2/models/digits/infer", content=b"not gzip", headers={"content-encoding": "gzip"})
    assert corrupt.status_code == 400
    unknown = http.post("/v2/models/digits/infer", content=b"{}", headers={"content-encoding": "br"})
    assert unknown.status_code == 415
    assert "Content-Encoding 'br'" in unknown.json()["error"]


async def test_concurrent_callers_get_their_own_rows(digits_server: Server) -> None:
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 16, size=(int(rng.integers(1, 6)), 64)).astype(np.float32) for _ in range(40)]
    async with httpx.AsyncClient(base_url=digits_server.url, timeout=60) as client:
        alone = [await client.post("/v2/models/digits/infer", json=_infer(batch.tolist())) for batch in batches[:5]]
        together = await asyncio.gather(
            *(client.post("/v2/models/digits/infer", json=_infer(batch.tolist())) for batch in batches)
        )
        metrics = (await client.get("/metrics")).text
    for response in (*alone, *together):
        assert response.status_code == 200, response.text
    for batch, response in zip(batches, together, strict=True):
        output = response.json()["outputs"][0]
        assert output["shape"] == [len(batch), 10]
    for first, second in zip(alone, together[:5], strict=True):
        np.testing.assert_allclose(first.json()["outputs"][0]["data"], second.json()["outputs"][0]["data"], rtol=1e-5)
    batch_count = _sample(metrics, 'maas_inference_batch_size_count{model="digits"}')
    assert batch_count < _sample(metrics, 'maas_inference_requests_total{code="200",model="digits",protocol="v2"}')


def _sample(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the exposition")


def test_metrics_exposition(http: httpx.Client) -> None:
    http.post("/v2/models/digits/infer", json=_infer())
    text = http.get("/metrics").text
    for name in (
        "maas_inference_requests_total",
        "maas_inference_request_duration_seconds_bucket",
        "maas_inference_queue_duration_seconds_bucket",
        "maas_inference_compute_duration_seconds_bucket",
        "maas_inference_batch_size_bucket",
        "maas_inference_inflight_requests",
        "maas_inference_queue_depth",
        "maas_inference_model_load_seconds",
        'maas_inference_model_ready{model="digits"} 1.0',
    ):
        assert name in text
    assert _sample(text, 'maas_inference_requests_total{code="200",model="digits",protocol="v2"}') >= 1


def test_access_log_has_latency_and_no_body(http: httpx.Client, digits_server: Server) -> None:
    secret = 12345.678
    http.post("/v2/models/digits/infer", json=_infer([[secret] * 64]))
    deadline = time.monotonic() + 10
    while True:  # access lines are written in batches, at most 0.1 s apart
        lines = [orjson.loads(line) for line in pathlib.Path(digits_server.log_path).read_text().splitlines() if line]
        access = [line for line in lines if line.get("logger") == "maas.access"]
        if any(line["path"] == "/v2/models/digits/infer" and line["duration_ms"] > 0 for line in access):
            break
        assert time.monotonic() < deadline, "no access line for the request"
        time.sleep(0.1)
    assert {"method", "status", "response_bytes", "client", "time"} <= set(access[-1])
    assert str(secret) not in digits_server.log()
