"""Datatypes, the v2 and v1 bodies, settings and auth, without a server process."""

from __future__ import annotations

import pathlib
import typing

import numpy as np
import orjson
import pytest
import torch

from maas_workloads import contract
from maas_workloads.artifact import Datatype, TensorSpec
from maas_workloads.serve import datatypes, jsoncodec, oip, v1
from maas_workloads.serve.errors import BadRequestError
from maas_workloads.serve.http.auth import BearerAuth
from maas_workloads.serve.settings import SettingsError, parse

VALUES = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 200, 255],
    "UINT16": [0, 1, 40000, 65535],
    "UINT32": [0, 1, 2**31, 2**32 - 1],
    "UINT64": [0, 1, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-30000, 0, 1, 30000],
    "INT32": [-(2**31), 0, 7, 2**31 - 1],
    "INT64": [-(2**62), 0, 7, 2**62],
    "FP16": [0.5, -1.0, 2.0, 65504.0],
    "FP32": [0.25, -1.5, 3.0, 1e30],
    "FP64": [0.1, -1e300, 3.0, 1e-300],
    "BF16": [1.0, -2.0, 0.5, 256.0],
}


@pytest.mark.parametrize("datatype", sorted(VALUES))
def test_every_datatype_round_trips_through_json_and_binary(datatype: str) -> None:
    values = VALUES[datatype]
    array = jsoncodec.tensor_from_data([values[:2], values[2:]], datatype, [2, 2], name="t")
    assert array.shape == (2, 2)
    raw = datatypes.to_bytes(array, datatype)
    assert len(raw) == 4 * (datatypes.element_size(datatype) or 0)
    again = datatypes.from_bytes(raw, datatype, [2, 2], name="t")
    np.testing.assert_array_equal(again, array)
    data = jsoncodec.data_of(again, datatype, name="t")
    assert orjson.loads(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)) == values


def test_bytes_tensors() -> None:
    array = jsoncodec.tensor_from_data(["a", "βγ", ""], "BYTES", [3], name="text")
    raw = datatypes.to_bytes(array, "BYTES")
    assert raw == b"\x01\x00\x00\x00a\x04\x00\x00\x00\xce\xb2\xce\xb3\x00\x00\x00\x00"
    assert list(datatypes.from_bytes(raw, "BYTES", [3], name="text")) == [b"a", "βγ".encode(), b""]
    assert jsoncodec.data_of(array, "BYTES", name="text") == ["a", "βγ", ""]
    with pytest.raises(ValueError, match="past the end"):
        datatypes.from_bytes(b"\x09\x00\x00\x00abc", "BYTES", [1], name="text")
    with pytest.raises(ValueError, match="left over"):
        datatypes.from_bytes(raw + b"!", "BYTES", [3], name="text")


@pytest.mark.parametrize(
    ("data", "datatype", "fragment"),
    [
        ([1.5, 2.0], "INT64", "takes integers"),
        ([300, 1], "UINT8", r"in \[0, 255\]"),
        ([1, 0], "BOOL", "takes true or false"),
        ([1e39, 0], "FP32", "beyond the largest finite FP32"),
        (["x", "y"], "FP32", "got strings"),
        ([[1], [2, 3]], "FP32", "not a regular nesting"),
    ],
)
def test_json_values_the_datatype_cannot_hold_are_refused(data: object, datatype: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        jsoncodec.tensor_from_data(data, datatype, [2], name="t")


SPECS = [TensorSpec(name="a", datatype="FP32", shape=[-1, 2]), TensorSpec(name="b", datatype="INT32", shape=[-1])]
OUT = [TensorSpec(name="y", datatype="FP32", shape=[-1, 2])]


def test_mixed_json_and_binary_inputs_decode_in_order() -> None:
    header = orjson.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}},
                {"name": "b", "datatype": "INT32", "shape": [2], "data": [5, 6]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            "parameters": {"timeout": 2_000_000},
        }
    )
    body = header + np.arange(4, dtype="<f4").tobytes()
    request = oip.decode_request(body, len(header), SPECS, OUT)
    assert request.rows == 2
    assert request.id == "r1"
    assert request.timeout_seconds == 2.0
    np.testing.assert_array_equal(request.inputs["a"], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(request.inputs["b"], [5, 6])

    content, json_length = oip.encode_response(
        model_name="m",
        model_version="1",
        request=request,
        outputs={"y": np.ones((2, 2), dtype=np.float32)},
        specs=OUT,
        labels=None,
    )
    assert json_length is not None
    document = orjson.loads(content[:json_length])
    assert document["id"] == "r1"
    assert document["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}
    ]
    assert content[json_length:] == np.ones(4, dtype="<f4").tobytes()


def test_inputs_must_agree_on_the_batch_and_all_be_present() -> None:
    disagree = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [0, 0, 0, 0]},
            {"name": "b", "datatype": "INT32", "shape": [3], "data": [1, 2, 3]},
        ]
    }
    with pytest.raises(BadRequestError, match="batch size"):
        oip.decode_request(orjson.dumps(disagree), None, SPECS, OUT)
    missing = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [0, 0]}]}
    with pytest.raises(BadRequestError, match=r"missing input.*'b'"):
        oip.decode_request(orjson.dumps(missing), None, SPECS, OUT)


def test_classification_top_k_with_labels() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.1]], dtype=np.float32)
    top = oip.classify(scores, 2, ["cat", "dog", "eel"])
    assert top.tolist() == [[b"0.700000:1:dog", b"0.200000:2:eel"], [b"0.500000:0:cat", b"0.400000:1:dog"]]


def test_v1_single_and_multiple_inputs() -> None:
    one = [TensorSpec(name="x", datatype="FP32", shape=[-1, 2])]
    inputs, rows = v1.decode_request(orjson.dumps({"instances": [[1, 2], [3, 4], [5, 6]]}), one)
    assert rows == 3
    assert inputs["x"].dtype == np.float32
    several = orjson.dumps({"instances": [{"a": [1, 2], "b": 3}, {"a": [4, 5], "b": 6}]})
    inputs, rows = v1.decode_request(several, SPECS)
    np.testing.assert_array_equal(inputs["b"], [3, 6])
    with pytest.raises(BadRequestError, match="exactly the inputs"):
        v1.decode_request(orjson.dumps({"instances": [{"a": [1, 2]}]}), SPECS)
    outputs = {"y": np.array([[1.0, 2.0]], dtype=np.float32), "z": np.array([7], dtype=np.int64)}
    specs = [*OUT, TensorSpec(name="z", datatype="INT64", shape=[-1])]
    assert orjson.loads(v1.encode_response(outputs, specs)) == {"predictions": [{"y": [1.0, 2.0], "z": 7}]}
    assert orjson.loads(v1.encode_response(outputs, OUT)) == {"predictions": [[1.0, 2.0]]}


def test_settings_from_the_environment_and_flags(tmp_path: pathlib.Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    env = {
        "MAAS_MODEL_URI": "s3://models/digits",
        "MAAS_MAX_BATCH_SIZE": "64",
        "MAAS_MAX_DELAY_MS": "0.5",
        "MAAS_AUTH_TOKEN_FILE": str(token),
        "MAAS_ACCESS_LOG": "false",
    }
    settings = parse(["--port", "9000"], env)
    assert (settings.model_name, settings.model_version, settings.http.port) == ("digits", "1", 9000)
    assert (settings.max_batch_size, settings.max_delay_ms, settings.http.auth_token) == (64, 0.5, "abc")
    assert settings.http.access_log is False
    assert parse(["--model", "/m", "--model-name", "x"], {"MAAS_AUTH_TOKEN": "direct"}).http.auth_token == "direct"
    with pytest.raises(SettingsError, match=r"--max-delay-ms \(MAAS_MAX_DELAY_MS\) must be a number"):
        parse([], {**env, "MAAS_MAX_DELAY_MS": "soon"})
    with pytest.raises(SettingsError, match="no model"):
        parse([], {})
    with pytest.raises(SettingsError, match="64 hex digits"):
        parse(["--model", "/m", "--model-sha256", "abc"], {})
    token.write_text("")
    with pytest.raises(SettingsError, match="is empty"):
        parse([], env)


def test_the_body_budget_defaults_to_four_bodies_and_holds_at_least_one() -> None:
    model = {"MAAS_MODEL_URI": "/m"}
    assert parse([], model).http.max_buffered_bytes == 4 * contract.DEFAULT_MAX_REQUEST_BYTES
    assert parse(["--max-request-bytes", "2048"], model).http.max_buffered_bytes == 8192
    assert (
        parse(
            ["--max-request-bytes", "2048"], {**model, contract.ENV_MAX_BUFFERED_REQUEST_BYTES: "5000"}
        ).http.max_buffered_bytes
        == 5000
    )
    with pytest.raises(
        SettingsError,
        match=r"--max-buffered-request-bytes \(MAAS_MAX_BUFFERED_REQUEST_BYTES\) 4096 "
        r"is less than --max-request-bytes \(MAAS_MAX_REQUEST_BYTES\) 8192",
    ):
        parse(["--max-request-bytes", "8192", "--max-buffered-request-bytes", "4096"], model)


def test_bearer_auth() -> None:
    auth = BearerAuth("t0ken")
    assert auth.allows(b"Bearer t0ken")
    assert auth.allows(b"bearer t0ken")
    assert not auth.allows(None)
    assert not auth.allows(b"Bearer t0ke")
    assert not auth.allows(b"Basic t0ken")
    assert not auth.allows(b"t0ken")


def test_the_manifest_accepts_every_datatype_the_server_serves() -> None:
    assert set(typing.get_args(Datatype)) == datatypes.DATATYPES
    assert set(datatypes.TORCH_DTYPES) == datatypes.DATATYPES - {"BYTES"}


def test_json_parsing_refuses_duplicate_keys_and_takes_non_finite_literals() -> None:
    assert jsoncodec.parse(b'{"a": [1, 2], "b": {"c": 1}}', "the request") == {"a": [1, 2], "b": {"c": 1}}
    parsed = jsoncodec.parse(b'{"a": [NaN, Infinity, -Infinity, 1.5]}', "the request")
    assert np.isnan(parsed["a"][0]) and parsed["a"][1:] == [np.inf, -np.inf, 1.5]
    for body, key in (
        (b'{"a": 1, "a": 2}', "a"),
        (b'{"inputs": [{"name": "x", "data": [1], "name": "y"}]}', "name"),
        (b'{"a": [NaN], "b": {"c": 1, "c": 2}}', "c"),  # also on the NaN path
        (b'{"a": [1, {"k": 1, "k": 2}]}', "k"),  # deep inside a list of numbers
    ):
        with pytest.raises(jsoncodec.JsonError, match=f"the key '{key}' twice"):
            jsoncodec.parse(body, "the request")
    # Strings that look like keys are not keys; a finite number too large for a double is not infinity.
    assert jsoncodec.parse(b'{"data": ["a\\": ", "b:"]}', "x") == {"data": ['a": ', "b:"]}
    with pytest.raises(jsoncodec.JsonError, match="1e400, beyond the range of a double"):
        jsoncodec.parse(b"[1e400, NaN]", "the request")
    with pytest.raises(jsoncodec.JsonError, match="not valid JSON"):
        jsoncodec.parse(b"[nan]", "the request")


def test_floats_round_to_the_datatype_and_never_overflow_silently() -> None:
    half = jsoncodec.tensor_from_data([0.1, 1e-10, 65519.0, -np.inf], "FP16", [4], name="h")
    assert half.tolist() == [np.float16(0.1), 0.0, 65504.0, -np.inf]  # nearest, as numpy rounds
    brain = jsoncodec.tensor_from_data([0.1, 1.0 + 2.0**-9, 3.3895e38], "BF16", [3], name="b")
    assert brain.tolist() == [0.10009765625, 1.0, float(torch.tensor(3.3895e38).bfloat16())]  # to nearest even
    for value, datatype in ((65520.0, "FP16"), (3.4e38, "BF16"), (3.5e38, "FP32")):
        with pytest.raises(ValueError, match=f"beyond the largest finite {datatype}"):
            jsoncodec.tensor_from_data([value], datatype, [1], name="t")


def test_json_outputs_carry_non_finite_floats_and_refuse_bytes_json_cannot_hold() -> None:
    logits = np.array([[0.5, -np.inf], [np.nan, np.inf]], dtype=np.float32)
    assert orjson.dumps(jsoncodec.data_of(logits, "FP32", name="y")) == b"[0.5,-Infinity,NaN,Infinity]"
    assert orjson.dumps({"v": jsoncodec.value_of(logits)}) == b'{"v":[[0.5,-Infinity],[NaN,Infinity]]}'
    assert orjson.dumps(jsoncodec.value_of(np.array(-np.inf))) == b"-Infinity"
    numpy = orjson.OPT_SERIALIZE_NUMPY
    assert orjson.dumps(jsoncodec.value_of(np.array([0.1], dtype=np.float16)), option=numpy) == b"[0.099975586]"
    with pytest.raises(ValueError, match=r"output 'y' holds bytes that are not UTF-8.*binary_data"):
        jsoncodec.data_of(np.array([b"ok", b"\xff"], dtype=object), "BYTES", name="y")
    with pytest.raises(ValueError, match="lone surrogate"):
        jsoncodec.tensor_from_data(["\ud800"], "BYTES", [1], name="t")
    with pytest.raises(ValueError, match=r"nested as \[1, 2\], but 'shape' says \[2, 1\]"):
        jsoncodec.tensor_from_data([["a", "b"]], "BYTES", [2, 1], name="t")


def test_duplicate_inputs_and_outputs_are_refused() -> None:
    tensor = {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [0, 0]}
    other = {"name": "b", "datatype": "INT32", "shape": [1], "data": [1]}
    with pytest.raises(BadRequestError, match="input 'a' is given twice"):
        oip.decode_request(orjson.dumps({"inputs": [tensor, other, tensor]}), None, SPECS, OUT)
    twice = {"inputs": [tensor, other], "outputs": [{"name": "y"}, {"name": "y", "parameters": {"binary_data": True}}]}
    with pytest.raises(BadRequestError, match="output 'y' is requested twice"):
        oip.decode_request(orjson.dumps(twice), None, SPECS, OUT)


def test_raw_binary_requests_deduce_the_shape_from_the_manifest() -> None:
    image = [TensorSpec(name="image", datatype="FP32", shape=[-1, -1, 3])]
    request = oip.decode_raw_request(np.arange(12, dtype="<f4").tobytes(), image)
    assert (request.rows, request.inputs["image"].shape, request.binary_output) == (1, (1, 4, 3), True)
    with pytest.raises(BadRequestError, match="not a whole number of 12-byte slices"):
        oip.decode_raw_request(b"\x00" * 13, image)
    with pytest.raises(BadRequestError, match="more than one variable dimension"):
        oip.decode_raw_request(b"", [TensorSpec(name="x", datatype="FP32", shape=[-1, -1, -1])])
    text = oip.decode_raw_request(b"\xffraw", [TensorSpec(name="t", datatype="BYTES", shape=[-1])])
    assert text.inputs["t"].tolist() == [b"\xffraw"]
    with pytest.raises(BadRequestError, match="must hold one element"):
        oip.decode_raw_request(b"x", [TensorSpec(name="t", datatype="BYTES", shape=[-1, 2])])
    with pytest.raises(BadRequestError, match="needs a model with one input"):
        oip.decode_request(b"", 0, SPECS, OUT)


def test_http_settings_from_the_environment(tmp_path: pathlib.Path) -> None:
    env = {
        "MAAS_MODEL_URI": "/m",
        "MAAS_MAX_HEADER_BYTES": "65536",
        "MAAS_HEADER_TIMEOUT_SECONDS": "2.5",
        "MAAS_BODY_TIMEOUT_SECONDS": "30",
        "MAAS_KEEP_ALIVE_TIMEOUT_SECONDS": "5",
        "MAAS_MAX_CONNECTIONS": "64",
    }
    http = parse([], env).http
    assert (http.max_header_bytes, http.header_timeout_seconds, http.body_timeout_seconds) == (65536, 2.5, 30.0)
    assert (http.keep_alive_timeout_seconds, http.max_connections) == (5.0, 64)
    defaults = parse(["--model", "/m"], {}).http
    assert (defaults.max_header_bytes, defaults.max_connections, defaults.drain_delay_seconds) == (32768, 1024, 2.0)
    with pytest.raises(SettingsError, match=r"--max-connections \(MAAS_MAX_CONNECTIONS\) must be at least 1"):
        parse([], {**env, "MAAS_MAX_CONNECTIONS": "0"})
    with pytest.raises(SettingsError, match=r"--max-header-bytes \(MAAS_MAX_HEADER_BYTES\) must be a number"):
        parse([], {**env, "MAAS_MAX_HEADER_BYTES": "32k"})
