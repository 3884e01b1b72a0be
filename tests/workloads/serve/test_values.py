"""Never a plausible wrong answer: every value rule (see `jsoncodec`), through tritonclient,
the kserve SDK and raw HTTP, against a model that echoes one input of each datatype.

tritonclient builds tensors from numpy arrays whose dtype must match the declared datatype,
so it cannot express out-of-range or wrong-kind values; those go through the kserve SDK
(whose `InferInput(data=[...])` sends a list as is) and raw HTTP.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import re
from collections.abc import Iterator

import httpx
import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import RequestedOutput
from tritonclient.utils import InferenceServerException

from tests.workloads.serve.artifacts import ECHO_INPUTS
from tests.workloads.serve.conftest import Server

pytestmark = pytest.mark.slow

FINITE: dict[str, np.ndarray] = {
    "b": np.array([[True, False]]),
    "u8": np.array([[0, 255]], dtype=np.uint8),
    "u16": np.array([[0, 65535]], dtype=np.uint16),
    "u32": np.array([[0, 2**32 - 1]], dtype=np.uint32),
    "u64": np.array([[0, 2**64 - 1]], dtype=np.uint64),
    "i8": np.array([[-128, 127]], dtype=np.int8),
    "i16": np.array([[-(2**15), 2**15 - 1]], dtype=np.int16),
    "i32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
    "i64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    "f16": np.array([[65504.0, 2.0**-24]], dtype=np.float16),  # largest, smallest subnormal
    "f32": np.array([[np.finfo(np.float32).max, 2.0**-149]], dtype=np.float32),
    "f64": np.array([[np.finfo(np.float64).max, 5e-324]], dtype=np.float64),
    "bf16": np.array([[float(ml_dtypes.finfo(ml_dtypes.bfloat16).max), 2.0**-133]], dtype=np.float32),
}
NON_FINITE = {name: np.array([[-np.inf, np.nan]], dtype=FINITE[name].dtype) for name in ("f16", "f32", "f64", "bf16")}


@pytest.fixture(scope="module")
def echo_server(echo_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(str(echo_dir), tmp_path_factory.mktemp("logs") / "echo.log", {"MAAS_MODEL_NAME": "echo"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _values(non_finite: bool = False) -> dict[str, np.ndarray]:
    return {**FINITE, **(NON_FINITE if non_finite else {})}


def _assert_echoed(sent: dict[str, np.ndarray], received: dict[str, np.ndarray]) -> None:
    for name, array in sent.items():
        got = np.asarray(received[f"{name}_out"])
        assert got.shape == array.shape, name
        np.testing.assert_array_equal(got.astype(array.dtype), array, err_msg=name)  # NaN equals NaN here


# --- tritonclient ---------------------------------------------------------------------------
def _triton(server: Server, values: dict[str, np.ndarray], binary: bool) -> dict[str, np.ndarray]:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    inputs = []
    for name, array in values.items():
        tensor = triton.InferInput(name, list(array.shape), ECHO_INPUTS[name])
        if name == "bf16":  # tritonclient sends BF16 as binary only, from ml_dtypes arrays
            tensor.set_data_from_numpy(array.astype(ml_dtypes.bfloat16), binary_data=True)
        else:
            tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(f"{name}_out", binary_data=binary) for name in values]
    result = client.infer("echo", inputs, outputs=outputs)
    return {f"{name}_out": result.as_numpy(f"{name}_out") for name in values}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("non_finite", [False, True], ids=["extremes", "non-finite"])
def test_tritonclient_values_arrive_intact(echo_server: Server, binary: bool, non_finite: bool) -> None:
    values = _values(non_finite)
    _assert_echoed(values, _triton(echo_server, values, binary))


def test_tritonclient_duplicates_are_refused(echo_server: Server) -> None:
    client = triton.InferenceServerClient(url=echo_server.url.removeprefix("http://"))
    inputs = []
    for name, array in FINITE.items():
        tensor = triton.InferInput(name, list(array.shape), ECHO_INPUTS[name])
        tensor.set_data_from_numpy(array.astype(ml_dtypes.bfloat16) if name == "bf16" else array)
        inputs.append(tensor)
    with pytest.raises(InferenceServerException, match="input 'u8' is given twice"):
        client.infer("echo", [*inputs, inputs[1]])
    twice = [triton.InferRequestedOutput("u8_out"), triton.InferRequestedOutput("u8_out", binary_data=False)]
    with pytest.raises(InferenceServerException, match="output 'u8_out' is requested twice"):
        client.infer("echo", inputs, outputs=twice)


# --- kserve SDK ----------------------------------------------------------------------------
async def _kserve(
    server: Server, values: dict[str, np.ndarray], binary: bool, *, outputs: list[RequestedOutput] | None = None
) -> dict[str, np.ndarray]:
    """kserve has no BF16 and sends FP16 only as binary: those travel as lists and binary."""
    inputs = []
    for name, array in values.items():
        if name == "bf16":
            inputs.append(InferInput(name, list(array.shape), "BF16", data=array.ravel().tolist()))
            continue
        tensor = InferInput(name, list(array.shape), ECHO_INPUTS[name])
        tensor.set_data_from_numpy(array, binary_data=binary or name == "f16")
        inputs.append(tensor)
    if outputs is None:
        outputs = [RequestedOutput(f"{name}_out", {"binary_data": binary and name != "bf16"}) for name in values]
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        response = await client.infer(
            server.url, InferRequest("echo", inputs, request_outputs=outputs), model_name="echo"
        )
    finally:
        await client.close()
    return {
        output.name: np.array(output.data, dtype=np.float32).reshape(output.shape)
        if output.datatype == "BF16"
        else output.as_numpy()
        for output in response.outputs
    }


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_kserve_values_arrive_intact(echo_server: Server, binary: bool) -> None:
    _assert_echoed(FINITE, await _kserve(echo_server, FINITE, binary))


async def test_kserve_non_finite_values_arrive_intact_or_fail_loudly(echo_server: Server) -> None:
    binary = {**_values(non_finite=True), "bf16": FINITE["bf16"]}  # kserve has no BF16 but as a JSON list
    _assert_echoed(binary, await _kserve(echo_server, binary, True))
    # kserve's JSON encoder (orjson) writes NaN as null: the server refuses it, naming the input.
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await _kserve(echo_server, {**FINITE, "f32": NON_FINITE["f32"]}, False)
    assert refused.value.response.status_code == 400
    assert "input 'f32': FP32 takes numbers, got null" in refused.value.response.text
    # kserve's response parser (orjson) cannot read the NaN/Infinity literals: it fails, never reads null.
    with pytest.raises(InvalidInput):
        await _kserve(echo_server, binary, True, outputs=[RequestedOutput("f32_out", {"binary_data": False})])


def _kserve_lists(**changes: list[object]) -> list[InferInput]:
    """Every echo input as a JSON list, as `InferInput(data=...)` sends it unchecked (FP16: binary)."""
    inputs = []
    for name, array in FINITE.items():
        if name == "f16" and name not in changes:  # the SDK refuses FP16 in JSON
            tensor = InferInput(name, [1, 2], "FP16")
            tensor.set_data_from_numpy(array)
        else:
            tensor = InferInput(name, [1, 2], ECHO_INPUTS[name], data=changes.get(name, array.tolist()))
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"u8": [[256, 0]]}, r"input 'u8': UINT8 holds integers in \[0, 255\]"),
        ({"u64": [[-1, 0]]}, "input 'u64': UINT64 holds integers in"),
        ({"i32": [[1, True]]}, "input 'i32': INT32 takes numbers, got true/false"),
        ({"i64": [[1.5, 2]]}, "input 'i64': INT64 takes integers"),
        ({"b": [[1, 0]]}, "input 'b': BOOL takes true or false, got numbers"),
        ({"f32": [[1e39, 0.0]]}, "input 'f32': values beyond the largest finite FP32"),
        ({"bf16": [[3.4e38, 0.0]]}, "input 'bf16': values beyond the largest finite BF16"),
        ({"f64": [[1.0], [2.0]]}, r"data is nested as \[2, 1\], but 'shape' says \[1, 2\]"),
    ],
)
async def test_kserve_unrepresentable_values_are_refused(
    echo_server: Server, change: dict[str, list[object]], message: str
) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await client.infer(echo_server.url, InferRequest("echo", _kserve_lists(**change)), model_name="echo")
    finally:
        await client.close()
    assert refused.value.response.status_code == 400
    assert re.search(message, refused.value.response.json()["error"])


async def test_kserve_duplicates_are_refused(echo_server: Server) -> None:
    inputs = _kserve_lists()
    twice = [RequestedOutput("u8_out"), RequestedOutput("u8_out", {"binary_data": True})]
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await client.infer(echo_server.url, InferRequest("echo", [*inputs, inputs[1]]), model_name="echo")
        assert "input 'u8' is given twice" in refused.value.response.json()["error"]
        with pytest.raises(httpx.HTTPStatusError) as refused:
            request = InferRequest("echo", inputs, request_outputs=twice)
            await client.infer(echo_server.url, request, model_name="echo")
        assert "output 'u8_out' is requested twice" in refused.value.response.json()["error"]
    finally:
        await client.close()


# --- raw HTTP ------------------------------------------------------------------------------
def _json_request(values: dict[str, np.ndarray], **overrides: object) -> dict[str, object]:
    inputs = [
        {"name": name, "datatype": ECHO_INPUTS[name], "shape": list(array.shape), "data": array.tolist()}
        for name, array in values.items()
    ]
    return {"inputs": inputs, **overrides}


def _post(server: Server, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/echo/infer", content=body, headers=headers, timeout=30)


def test_raw_json_values_both_ways(echo_server: Server) -> None:
    values = _values(non_finite=True)
    # Python's json writes NaN and -Infinity as the literals Triton accepts.
    response = _post(echo_server, json.dumps(_json_request(values)).encode())
    assert response.status_code == 200, response.text
    assert "-Infinity" in response.text and "NaN" in response.text and "null" not in response.text
    _assert_echoed(values, _arrays(json.loads(response.text)))
    finite = _post(echo_server, orjson.dumps(_json_request(FINITE)))
    assert finite.status_code == 200, finite.text
    _assert_echoed(FINITE, _arrays(orjson.loads(finite.content)))


def _arrays(response: dict[str, list[dict[str, object]]]) -> dict[str, np.ndarray]:
    """JSON outputs as arrays of the echoed input's dtype (a bare list of 0 and 2**64 - 1 is no dtype)."""
    return {
        str(output["name"]): np.array(
            output["data"], dtype=FINITE[str(output["name"]).removesuffix("_out")].dtype
        ).reshape(output["shape"])  # type: ignore[arg-type]
        for output in response["outputs"]
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"u8": [[255, 256]]}, r"input 'u8': UINT8 holds integers in \[0, 255\]"),
        ({"i8": [[-129, 0]]}, r"input 'i8': INT8 holds integers in \[-128, 127\]"),
        ({"u64": [[2**64, 0]]}, "input 'u64': UINT64 takes integers"),  # past 64 bits JSON parsers give a float
        ({"i16": [[1, True]]}, "input 'i16': INT16 takes numbers, got true/false"),
        ({"f32": [[1.5, False]]}, "input 'f32': FP32 takes numbers, got true/false"),
        ({"b": [[0, 1]]}, "input 'b': BOOL takes true or false, got numbers"),
        ({"i32": [[1.0, 2]]}, "input 'i32': INT32 takes integers"),
        ({"f64": [[None, 1.0]]}, "input 'f64': FP64 takes numbers, got null"),
        ({"f64": [["1", 1.0]]}, "input 'f64': FP64 takes numbers, got strings"),
        ({"f16": [[65520.0, 0.0]]}, r"input 'f16': values beyond the largest finite FP16 \(65504\)"),
        ({"bf16": [[3.4e38, 0.0]]}, r"input 'bf16': values beyond the largest finite BF16"),
        ({"f32": [[1.0], [2.0]]}, r"input 'f32': data is nested as \[2, 1\], but 'shape' says \[1, 2\]"),
        ({"f32": [1.0, 2.0, 3.0]}, r"input 'f32': data has 3 elements, shape \[1, 2\] needs 2"),
    ],
)
def test_raw_values_the_datatype_cannot_carry_are_refused(
    echo_server: Server, change: dict[str, object], message: str
) -> None:
    request = _json_request(FINITE)
    for item in request["inputs"]:  # type: ignore[attr-defined]
        if item["name"] in change:
            item["data"] = change[item["name"]]
    response = _post(echo_server, json.dumps(request).encode())  # orjson cannot write 2**64
    assert response.status_code == 400, response.text
    assert re.search(message, response.json()["error"]), response.json()["error"]


def test_raw_ambiguous_requests_are_refused(echo_server: Server) -> None:
    request = _json_request(FINITE)
    inputs = request["inputs"]
    cases: list[tuple[bytes, dict[str, str], str]] = [
        (orjson.dumps({"inputs": [*inputs, inputs[0]]}), {}, "input 'b' is given twice"),  # type: ignore[list-item]
        (orjson.dumps({**request, "outputs": [{"name": "u8_out"}] * 2}), {}, "output 'u8_out' is requested twice"),
        # Hand-written JSON: one object with the same key twice.
        (
            b'{"inputs": ' + orjson.dumps(inputs) + b', "inputs": []}',
            {},
            "the request has the key 'inputs' twice in one object",
        ),
        (
            orjson.dumps(request).replace(b'"datatype":"UINT8"', b'"datatype":"UINT8","datatype":"INT8"'),
            {},
            "the key 'datatype' twice",
        ),
        (orjson.dumps(request), {"Inference-Header-Content-Length": "0"}, "needs a model with one input"),
    ]
    for body, headers, message in cases:
        response = _post(echo_server, body, headers)
        assert response.status_code == 400, (message, response.text)
        assert message in response.json()["error"]
    repeated = httpx.Request(
        "POST",
        f"{echo_server.url}/v2/models/echo/infer",
        content=orjson.dumps(request),
        headers=[("inference-header-content-length", "10"), ("inference-header-content-length", "20")],
    )
    with httpx.Client(timeout=30) as client:
        answer = client.send(repeated)
    assert answer.status_code == 400
    assert "inference-header-content-length header appears more than once" in answer.json()["error"]


def test_raw_binary_request_for_a_single_input_model(digits_server: Server) -> None:
    pixels = np.linspace(0, 16, 64, dtype=np.float32)
    url = f"{digits_server.url}/v2/models/digits/infer"
    as_json = httpx.post(
        url, json={"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": pixels.tolist()}]}
    ).json()["outputs"][0]["data"]
    raw_headers = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}
    for body, headers in (
        (pixels.tobytes(), raw_headers),
        (gzip.compress(pixels.tobytes()), {**raw_headers, "Content-Encoding": "gzip"}),
    ):
        response = httpx.post(url, content=body, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        length = int(response.headers["inference-header-content-length"])
        header = orjson.loads(response.content[:length])
        assert header["outputs"] == [
            {"name": "logits", "datatype": "FP32", "shape": [1, 10], "parameters": {"binary_data_size": 40}}
        ]
        np.testing.assert_allclose(np.frombuffer(response.content[length:], dtype="<f4"), as_json, rtol=1e-6)
    wrong = httpx.post(url, content=pixels.tobytes()[:-4], headers=raw_headers, timeout=30)
    assert wrong.status_code == 400
    assert "252 bytes of binary data, but FP32 with shape [1, 64] needs 256" in wrong.json()["error"]
