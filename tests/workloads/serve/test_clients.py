"""Real Triton and KServe clients against the real server: they must work unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

from tests.workloads.serve.artifacts import digits_data
from tests.workloads.serve.conftest import Server

pytestmark = pytest.mark.slow


def _pixels(count: int) -> tuple[np.ndarray, np.ndarray]:
    features, labels = digits_data()
    return features[:count].numpy(), labels[:count].numpy()


def test_triton_client_with_binary_defaults(digits_server: Server) -> None:
    client = triton.InferenceServerClient(url=digits_server.url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_server_metadata()["extensions"]

    pixels, labels = _pixels(200)
    request = triton.InferInput("pixels", list(pixels.shape), "FP32")
    request.set_data_from_numpy(pixels)  # binary_data=True by default
    result = client.infer("digits", [request], outputs=[triton.InferRequestedOutput("logits")])
    logits = result.as_numpy("logits")
    assert logits.shape == (200, 10)
    assert (logits.argmax(axis=1) == labels).mean() > 0.9


def test_triton_client_json_and_classification(digits_server: Server) -> None:
    client = triton.InferenceServerClient(url=digits_server.url.removeprefix("http://"))
    pixels, labels = _pixels(5)
    request = triton.InferInput("pixels", list(pixels.shape), "FP32")
    request.set_data_from_numpy(pixels, binary_data=False)
    result = client.infer(
        "digits",
        [request],
        outputs=[triton.InferRequestedOutput("logits", binary_data=False, class_count=3)],
        request_id="abc",
    )
    assert result.get_response()["id"] == "abc"
    top = result.as_numpy("logits")
    assert top.shape == (5, 3)
    best = [str(entry).split(":") for entry in top[:, 0]]  # JSON BYTES come back as str
    assert [int(index) for _, index, _ in best] == list(labels)
    assert [label for _, _, label in best] == [f"digit-{n}" for n in labels]


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_triton_client_compressed_requests(digits_server: Server, compression: str) -> None:
    client = triton.InferenceServerClient(url=digits_server.url.removeprefix("http://"))
    pixels, labels = _pixels(20)
    request = triton.InferInput("pixels", list(pixels.shape), "FP32")
    request.set_data_from_numpy(pixels)
    result = client.infer("digits", [request], request_compression_algorithm=compression)
    assert (result.as_numpy("logits").argmax(axis=1) == labels).mean() > 0.9


def test_triton_client_versioned_model(digits_server: Server) -> None:
    client = triton.InferenceServerClient(url=digits_server.url.removeprefix("http://"))
    assert client.get_model_metadata("digits", model_version="1")["versions"] == ["1"]
    assert client.is_model_ready("digits", model_version="1")
    assert not client.is_model_ready("digits", model_version="7")
    pixels, _ = _pixels(1)
    request = triton.InferInput("pixels", [1, 64], "FP32")
    request.set_data_from_numpy(pixels)
    assert client.infer("digits", [request], model_version="1").as_numpy("logits").shape == (1, 10)


async def test_kserve_rest_client_v2(digits_server: Server) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        assert await client.is_server_live(digits_server.url)
        assert await client.is_server_ready(digits_server.url)
        assert await client.is_model_ready(digits_server.url, "digits")
        pixels, labels = _pixels(50)
        for binary in (True, False):
            tensor = InferInput(name="pixels", shape=list(pixels.shape), datatype="FP32")
            tensor.set_data_from_numpy(pixels, binary_data=binary)
            response = await client.infer(digits_server.url, InferRequest("digits", [tensor]), model_name="digits")
            logits = response.outputs[0].as_numpy()
            assert logits.shape == (50, 10)
            assert (logits.argmax(axis=1) == labels).mean() > 0.9
    finally:
        await client.close()


async def test_kserve_rest_client_v1(digits_server: Server) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=30))
    try:
        assert await client.is_server_live(digits_server.url)
        assert await client.is_model_ready(digits_server.url, "digits")
        pixels, labels = _pixels(20)
        response = await client.infer(digits_server.url, {"instances": pixels.tolist()}, model_name="digits")
        predictions = np.array(response["predictions"])
        assert predictions.shape == (20, 10)
        assert (predictions.argmax(axis=1) == labels).mean() > 0.9
    finally:
        await client.close()


def test_multiple_inputs_and_outputs(multi_server: Server) -> None:
    client = triton.InferenceServerClient(url=multi_server.url.removeprefix("http://"))
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    counts = np.array([[1, 2], [3, 4]], dtype=np.int64)
    inputs = [triton.InferInput("features", [2, 3], "FP32"), triton.InferInput("counts", [2, 2], "INT64")]
    inputs[0].set_data_from_numpy(features)
    inputs[1].set_data_from_numpy(counts, binary_data=False)
    outputs = [triton.InferRequestedOutput("doubled"), triton.InferRequestedOutput("total", binary_data=False)]
    result = client.infer("multi", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("doubled"), counts * 2)
    np.testing.assert_allclose(result.as_numpy("total"), [[6.0], [19.0]])
    assert [output["name"] for output in result.get_response()["outputs"]] == ["doubled", "total"]
