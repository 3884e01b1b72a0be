"""Datatypes, the v2 and v1 bodies, settings and auth, without a server process."""

from __future__ import annotations

import pathlib

import numpy as np
import orjson
import pytest

from maas_workloads.artifact import TensorSpec
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


def test_bearer_auth() -> None:
    auth = BearerAuth("t0ken")
    assert auth.allows(b"Bearer t0ken")
    assert auth.allows(b"bearer t0ken")
    assert not auth.allows(None)
    assert not auth.allows(b"Bearer t0ke")
    assert not auth.allows(b"Basic t0ken")
    assert not auth.allows(b"t0ken")
