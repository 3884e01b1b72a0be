"""Open Inference Protocol (v2) REST bodies, with the binary tensor data extension.

A request is JSON, optionally followed by raw tensor bytes; `Inference-Header-Content-Length`
tells where the JSON ends. With `Inference-Header-Content-Length: 0` the body is the raw
bytes of a single-input model's one input (Triton's "raw binary request"). Inputs are
checked against the manifest's tensor specs here, so everything past this module sees
well-formed, batch-aligned tensors. An input or a requested output named twice is refused:
which one counts would be a guess. How values travel in JSON is `jsoncodec`'s rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from maas_workloads.artifact import TensorSpec
from maas_workloads.serve import datatypes, jsoncodec
from maas_workloads.serve.errors import BadRequestError

HEADER_LENGTH: Final = "inference-header-content-length"
Tensor = npt.NDArray[np.generic]


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None
    """None: follow the request's `binary_data_output` parameter."""
    class_count: int = 0
    """> 0: the classification extension, the top-k classes as `score:index[:label]` strings."""


@dataclass(slots=True)
class InferenceRequest:
    inputs: dict[str, Tensor]
    rows: int
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    """None: every output of the model."""
    binary_output: bool = False
    timeout_seconds: float | None = None


def parse_json(data: bytes | memoryview, what: str) -> Any:
    """The JSON document (NaN and Infinity allowed, duplicate keys refused); 400 when it is not one."""
    try:
        return jsoncodec.parse(data, what)
    except jsoncodec.JsonError as error:
        raise BadRequestError(str(error)) from None


def header_length(value: str | None, body_size: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise BadRequestError(f"Inference-Header-Content-Length {value!r} is not an integer") from None
    if not 0 <= length <= body_size:
        raise BadRequestError(f"Inference-Header-Content-Length {length} is outside the body's {body_size} bytes")
    return length


def decode_request(
    body: bytes, json_length: int | None, specs: Sequence[TensorSpec], output_specs: Sequence[TensorSpec]
) -> InferenceRequest:
    """The request in `body`; `json_length` is Inference-Header-Content-Length (None: all JSON)."""
    if json_length == 0:
        return decode_raw_request(body, specs)
    view = memoryview(body)
    end = len(body) if json_length is None else json_length
    document = parse_json(view[:end], "the request")
    if not isinstance(document, dict):
        raise BadRequestError("the request must be a JSON object with an 'inputs' list")
    parameters = _parameters(document.get("parameters"), "request")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequestError("the request needs a non-empty 'inputs' list")
    by_name = {spec.name: spec for spec in specs}
    inputs: dict[str, Tensor] = {}
    offset = end
    for position, raw in enumerate(raw_inputs):
        tensor, offset = _decode_input(raw, position, by_name, view, offset)
        name = _str(raw, "name", f"inputs[{position}]")
        if name in inputs:
            raise BadRequestError(f"inputs[{position}]: input {name!r} is given twice; send each input once")
        inputs[name] = tensor
    if offset != len(body):
        raise BadRequestError(f"{len(body) - offset} bytes of binary data follow the inputs but no input claims them")
    missing = [spec.name for spec in specs if spec.name not in inputs]
    if missing:
        raise BadRequestError(f"missing input(s) {', '.join(map(repr, missing))}; the model takes {_names(specs)}")
    rows = {tensor.shape[0] for tensor in inputs.values()}
    if len(rows) != 1:
        raise BadRequestError(f"inputs disagree on the batch size (first dimension): {sorted(rows)}")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError("'id' must be a string")
    return InferenceRequest(
        inputs=inputs,
        rows=rows.pop(),
        id=request_id,
        outputs=_requested_outputs(document.get("outputs"), output_specs),
        binary_output=_bool(parameters, "binary_data_output", "request parameters"),
        timeout_seconds=_timeout(parameters),
    )


def decode_raw_request(body: bytes, specs: Sequence[TensorSpec]) -> InferenceRequest:
    """Triton's raw binary request: the body is the one input's bytes, a batch of one; outputs binary.

    The shape is the manifest's, the batch dimension 1 and at most one other variable
    dimension deduced from the body's size; a BYTES input is one element, the whole body.
    """
    if len(specs) != 1:
        raise BadRequestError(
            f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input; "
            f"this one takes {_names(specs)}: send the JSON header"
        )
    spec = specs[0]
    shape = [1 if index == 0 and size == -1 else size for index, size in enumerate(spec.shape)]
    variable = [index for index, size in enumerate(shape) if size == -1]
    where = f"raw binary request for input {spec.name!r} ({spec.datatype}, model shape {spec.shape})"
    if spec.datatype == "BYTES":
        if variable or math.prod(shape) != 1:
            raise BadRequestError(f"{where}: a BYTES input must hold one element; send the JSON header")
        element = np.empty(1, dtype=np.object_)
        element[0] = body
        return InferenceRequest(inputs={spec.name: element.reshape(shape)}, rows=1, binary_output=True)
    if len(variable) > 1:
        raise BadRequestError(f"{where}: more than one variable dimension besides the batch; send the JSON header")
    element_size = datatypes.element_size(spec.datatype)
    assert element_size is not None
    fixed = element_size * math.prod(size for size in shape if size != -1)
    if variable:
        if fixed == 0 or len(body) % fixed:
            raise BadRequestError(f"{where}: {len(body)} bytes is not a whole number of {fixed}-byte slices")
        shape[variable[0]] = len(body) // fixed
    try:
        tensor = datatypes.from_bytes(body, spec.datatype, shape, name=spec.name)
    except ValueError as error:
        raise BadRequestError(f"{where}: {error}") from None
    return InferenceRequest(inputs={spec.name: tensor}, rows=shape[0], binary_output=True)


def _decode_input(
    raw: object, position: int, specs: Mapping[str, TensorSpec], body: memoryview, offset: int
) -> tuple[Tensor, int]:
    where = f"inputs[{position}]"
    if not isinstance(raw, dict):
        raise BadRequestError(f"{where} must be an object with name, shape, datatype and data")
    name = _str(raw, "name", where)
    spec = specs.get(name)
    if spec is None:
        raise BadRequestError(f"{where}: the model has no input {name!r}; its inputs are {_names(specs.values())}")
    datatype = _str(raw, "datatype", f"input {name!r}")
    if datatype != spec.datatype:
        raise BadRequestError(f"input {name!r} has datatype {datatype}, the model expects {spec.datatype}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequestError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    check_shape(name, shape, spec)
    parameters = _parameters(raw.get("parameters"), f"input {name!r}")
    binary_size = parameters.get("binary_data_size")
    try:
        if binary_size is None:
            if "data" not in raw:
                raise BadRequestError(f"input {name!r} has neither 'data' nor a 'binary_data_size' parameter")
            return jsoncodec.tensor_from_data(raw["data"], datatype, shape, name=name), offset
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
            raise BadRequestError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in raw:
            raise BadRequestError(f"input {name!r} has both 'data' and binary_data_size; send one")
        if offset + binary_size > len(body):
            raise BadRequestError(
                f"input {name!r}: binary_data_size {binary_size} runs past the end of the body "
                f"({len(body) - offset} bytes left); check Inference-Header-Content-Length"
            )
        chunk = body[offset : offset + binary_size]
        return datatypes.from_bytes(chunk, datatype, shape, name=name), offset + binary_size
    except ValueError as error:
        raise BadRequestError(str(error)) from None


def check_shape(name: str, shape: Sequence[int], spec: TensorSpec) -> None:
    expected = spec.shape
    if len(shape) != len(expected) or any(want not in (-1, got) for want, got in zip(expected, shape, strict=True)):
        raise BadRequestError(f"input {name!r} has shape {list(shape)}, the model expects {expected} (-1: any size)")


def _requested_outputs(raw: object, specs: Sequence[TensorSpec]) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequestError("'outputs' must be a list of {name, parameters}")
    known = {spec.name for spec in specs}
    requested: list[RequestedOutput] = []
    for position, item in enumerate(raw):
        where = f"outputs[{position}]"
        if not isinstance(item, dict):
            raise BadRequestError(f"{where} must be an object with a name")
        name = _str(item, "name", where)
        if name not in known:
            raise BadRequestError(f"{where}: the model has no output {name!r}; its outputs are {_names(specs)}")
        parameters = _parameters(item.get("parameters"), f"output {name!r}")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise BadRequestError(f"output {name!r}: binary_data must be true or false")
        class_count = parameters.get("classification", 0)
        if not isinstance(class_count, int) or isinstance(class_count, bool) or class_count < 0:
            raise BadRequestError(f"output {name!r}: classification must be a non-negative integer")
        if any(output.name == name for output in requested):
            raise BadRequestError(f"{where}: output {name!r} is requested twice; request each output once")
        requested.append(RequestedOutput(name, binary, class_count))
    return requested


def _timeout(parameters: Mapping[str, object]) -> float | None:
    """The `timeout` request parameter, in microseconds as Triton's clients send it."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise BadRequestError("the 'timeout' parameter must be a positive number of microseconds")
    return float(value) / 1e6


def _parameters(raw: object, where: str) -> Mapping[str, object]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequestError(f"{where}: 'parameters' must be an object")
    return raw


def _str(raw: Mapping[str, object], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise BadRequestError(f"{where}: '{key}' must be a string")
    return value


def _bool(raw: Mapping[str, object], key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise BadRequestError(f"{where}: '{key}' must be true or false")
    return value


def _names(specs: Iterable[TensorSpec]) -> str:
    return ", ".join(repr(spec.name) for spec in specs)


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request: InferenceRequest,
    outputs: Mapping[str, Tensor],
    specs: Sequence[TensorSpec],
    labels: Sequence[str] | None,
) -> tuple[bytes, int | None]:
    """The response body and, when binary outputs follow the JSON, the JSON's length."""
    wanted = request.outputs or [RequestedOutput(spec.name, None) for spec in specs]
    datatype_of = {spec.name: spec.datatype for spec in specs}
    entries: list[dict[str, object]] = []
    chunks: list[bytes] = []
    for output in wanted:
        tensor = outputs[output.name]
        datatype = datatype_of[output.name]
        if output.class_count:
            tensor, datatype = classify(tensor, output.class_count, labels), "BYTES"
        entry: dict[str, object] = {"name": output.name, "datatype": datatype, "shape": list(tensor.shape)}
        if request.binary_output if output.binary is None else output.binary:
            chunk = datatypes.to_bytes(tensor, datatype)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            try:
                entry["data"] = jsoncodec.data_of(tensor, datatype, name=output.name)
            except ValueError as error:
                raise BadRequestError(str(error)) from None
        entries.append(entry)
    document: dict[str, object] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request.id is not None:
        document["id"] = request.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def classify(scores: Tensor, count: int, labels: Sequence[str] | None) -> Tensor:
    """Triton's classification extension: per row, the top `count` as `score:index[:label]`."""
    if scores.ndim < 1 or scores.dtype.kind not in "fiu":
        raise BadRequestError("classification needs a numeric output with classes in its last dimension")
    count = min(count, scores.shape[-1])
    order = np.argsort(-scores.astype(np.float64), axis=-1, kind="stable")[..., :count]
    result = np.empty(order.shape, dtype=np.object_)
    for position in np.ndindex(order.shape):
        index = int(order[position])
        score = float(scores[(*position[:-1], index)])
        label = f":{labels[index]}" if labels is not None and index < len(labels) else ""
        result[position] = f"{score:f}:{index}{label}".encode()
    return result
