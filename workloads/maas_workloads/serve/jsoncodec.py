"""Tensors in JSON, both ways, under one rule: a value arrives exactly as meant, or the request fails.

A request whose meaning is ambiguous, or holds values its datatype cannot carry, is refused
with a 400 naming the problem — never answered from something else:

- duplicates: an object key given twice (`{"name": "a", "name": "b"}`), the same input or
  requested output twice (in `oip`), a guarded header twice (in `http.front`);
- `shape` against `data`: `data` is flat (row-major) or nested exactly as `shape`; nesting
  that disagrees with `shape` ([[1, 2], [3, 4], [5, 6]] for shape [2, 3]) is refused even
  when the element count matches;
- value kinds: BOOL takes only `true`/`false`; integer datatypes take only integers within
  their range (UINT8 0..255, INT64 -2^63..2^63-1, ...); floating-point datatypes take numbers
  (integers too) and the literals `NaN`, `Infinity`, `-Infinity` (as Triton does); `true` and
  `false` are refused in numeric tensors, `null` everywhere; BYTES takes strings (UTF-8);
- floating-point range: a value is rounded to the nearest value of its datatype (IEEE
  round-to-nearest-even, what every client library does with numpy); a finite value beyond
  the datatype's largest finite value (65504 for FP16, about 3.39e38 for BF16) is refused
  rather than turned into an infinity.

Responses: non-finite floats are written as `NaN`, `Infinity`, `-Infinity` (as Triton
writes them; Python's json, rapidjson and tritonclient read them back exactly, strict parsers
fail loudly rather than reading `null`); FP16 and BF16 values are written as the shortest
decimal that reads back to the same value; BYTES that are not valid UTF-8 cannot be carried
in JSON, so such an output must be requested as binary (`binary_data`), else the request
fails with a 400 saying so.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson
import torch

from maas_workloads.serve.datatypes import NUMPY_DTYPES

Array = npt.NDArray[np.generic]
_NON_FINITE_LITERAL: Final = re.compile(rb"NaN|Infinity")
_KEY_END: Final = re.compile(rb'"\s*:')
"""Where an object key ends: once per key, and more only inside strings that hold `":`."""
_FLOAT_KINDS: Final = frozenset({"FP16", "FP32", "FP64", "BF16"})
_BF16_MAX: Final = float(torch.finfo(torch.bfloat16).max)


class JsonError(ValueError):
    """The JSON itself is malformed or ambiguous (not valid JSON, a duplicate key)."""


# --- parsing ------------------------------------------------------------------------------
def parse(data: bytes | memoryview, what: str) -> Any:
    """The JSON document in `data`; raises JsonError naming `what` (e.g. "the request").

    orjson on the hot path; the standard library only for documents holding NaN or Infinity,
    which orjson (strict JSON) refuses. Either way a duplicate object key is refused.
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if not _NON_FINITE_LITERAL.search(data):
            raise JsonError(f"{what} is not valid JSON: {error}") from None
        return _parse_lenient(data, what)
    if len(_KEY_END.findall(data)) != _count_keys(document):
        _parse_lenient(data, what)  # finds the duplicate and says which, or accepts the count's excess
    return document


def _count_keys(document: object) -> int:
    """Keys in the objects of a parsed document, skipping lists whose first item is no container.

    Equals the count of key ends in the text for every document without duplicate keys, but
    those with objects inside lists of numbers or strings holding `":`; a mismatch only
    sends the document to the slow, exact check.
    """
    count, pending = 0, [document]
    while pending:
        value = pending.pop()
        if type(value) is dict:
            count += len(value)
            pending += [item for item in value.values() if type(item) is dict or type(item) is list]
        elif type(value) is list and value and (type(value[0]) is dict or type(value[0]) is list):
            pending += value
    return count


def _parse_lenient(data: bytes | memoryview, what: str) -> Any:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonError(f"{what} has the key {key!r} twice in one object; send it once")
            seen.add(key)
        return dict(pairs)

    def finite(text: str) -> float:
        value = float(text)
        if math.isinf(value):
            raise JsonError(f"{what} has the number {text}, beyond the range of a double")
        return value

    try:
        return json.loads(bytes(data), object_pairs_hook=unique, parse_float=finite)
    except JsonError:
        raise
    except ValueError as error:  # json.JSONDecodeError, or digits beyond the int parser's limit
        raise JsonError(f"{what} is not valid JSON: {error}") from None


# --- requests -----------------------------------------------------------------------------
def tensor_from_data(data: object, datatype: str, shape: Sequence[int], *, name: str) -> Array:
    """A v2 input tensor from its `data` (flat, or nested as `shape`) for an already validated shape."""
    where = f"input {name!r}"
    if not isinstance(data, list):
        raise ValueError(f"{where}: 'data' must be a list (flat, or nested as the shape)")
    count = math.prod(shape)
    if datatype == "BYTES":
        values, nesting = _strings(data, where)
    else:
        values = _numbers(data, datatype, where)
        nesting = list(values.shape)
    if len(nesting) > 1 and nesting != list(shape):
        raise ValueError(f"{where}: data is nested as {nesting}, but 'shape' says {list(shape)}; nest it as the shape")
    size = math.prod(nesting)
    if size != count:
        raise ValueError(f"{where}: data has {size} elements, shape {list(shape)} needs {count}")
    return values.reshape(shape)


def tensor_from_instances(data: object, datatype: str, *, name: str) -> Array:
    """A v1 input tensor whose shape is the nesting of the JSON lists (`instances`)."""
    if datatype == "BYTES":
        raise ValueError(f"input {name!r} is BYTES, which the v1 protocol cannot carry here; use v2")
    return _numbers(data, datatype, f"input {name!r}")


def _numbers(data: object, datatype: str, where: str) -> Array:
    try:
        raw = np.asarray(data)
    except ValueError as error:  # ragged nesting
        raise ValueError(f"{where}: data is not a regular nesting of lists: {error}") from None
    target = NUMPY_DTYPES[datatype]
    if raw.size == 0:
        return raw.astype(target)
    kind = raw.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise ValueError(f"{where}: BOOL takes true or false, got {_describe(kind)}")
        return raw
    if kind not in "iuf":
        raise ValueError(f"{where}: {datatype} takes numbers, got {_describe(kind)}")
    serialized = orjson.dumps(data)  # at C speed; numbers never spell true or false
    if b"true" in serialized or b"false" in serialized:
        raise ValueError(f"{where}: {datatype} takes numbers, got true/false among them")  # numpy would read 1, 0
    if datatype in _FLOAT_KINDS:
        return _floats(raw, datatype, where)
    # orjson writes every float with a '.' or an exponent, NaN and Infinity as null: integers have none.
    if kind == "f" and (b"." in serialized or b"e" in serialized or b"null" in serialized):
        raise ValueError(f"{where}: {datatype} takes integers, got numbers with a fraction, an exponent, or NaN")
    limits = np.iinfo(target)  # type: ignore[type-var]
    outside = f"{where}: {datatype} holds integers in [{limits.min}, {limits.max}], got values outside"
    if kind == "f":  # integers that no single numpy integer type holds (e.g. -1 with 2**64 - 1)
        try:
            return np.array(data, dtype=target)
        except OverflowError:
            raise ValueError(outside) from None
    if raw.min() < limits.min or raw.max() > limits.max:
        raise ValueError(outside)
    return raw.astype(target)


def _describe(kind: str) -> str:
    names = {"b": "true/false", "i": "numbers", "u": "numbers", "f": "numbers", "U": "strings", "S": "strings"}
    return names.get(kind, "null, objects or mixed values")


def _floats(raw: Array, datatype: str, where: str) -> Array:
    """Round to the datatype (to nearest even); refuse finite values that would become infinite."""
    wide = np.asarray(raw, dtype=np.float64)
    if datatype == "FP64":
        return wide
    largest = _BF16_MAX if datatype == "BF16" else float(np.finfo(NUMPY_DTYPES[datatype]).max)  # type: ignore[type-var]
    beyond = f"{where}: values beyond the largest finite {datatype} ({largest:g})"
    try:
        with np.errstate(over="raise"):
            narrow = wide.astype(np.float32 if datatype == "BF16" else NUMPY_DTYPES[datatype])
    except FloatingPointError:
        raise ValueError(beyond) from None
    if datatype == "BF16":
        # Rounding through float32 first is exact: 24 >= 2 * 8 + 2 bits (no double-rounding error).
        narrow = torch.from_numpy(narrow).to(torch.bfloat16).float().numpy()
        if not np.array_equal(np.isfinite(narrow), np.isfinite(wide)):
            raise ValueError(beyond)
    return narrow


def _strings(data: list[object], where: str) -> tuple[Array, list[int]]:
    """BYTES elements (UTF-8 of each string) and the nesting of `data`."""
    nesting: list[int] = []
    level: list[object] = data
    while True:
        nesting.append(len(level))
        if not level or not isinstance(level[0], list):
            break
        level = level[0]
    flat: list[bytes] = []

    def walk(items: list[object], depth: int) -> None:
        if len(items) != nesting[depth]:
            raise ValueError(f"{where}: data is not a regular nesting of lists")
        for item in items:
            if depth + 1 < len(nesting):
                if not isinstance(item, list):
                    raise ValueError(f"{where}: data is not a regular nesting of lists")
                walk(item, depth + 1)
            elif isinstance(item, str):
                try:
                    flat.append(item.encode())
                except UnicodeEncodeError:
                    raise ValueError(f"{where}: a BYTES string holds a lone surrogate, which is not UTF-8") from None
            else:
                raise ValueError(f"{where}: BYTES takes strings, got {type(item).__name__}")

    walk(data, 0)
    array = np.empty(len(flat), dtype=np.object_)
    array[:] = flat
    return array, nesting


# --- responses ----------------------------------------------------------------------------
def data_of(array: Array, datatype: str, *, name: str) -> object:
    """The flat, row-major v2 `data` of an output, for orjson; ValueError when JSON cannot carry it."""
    if datatype == "BYTES":
        return [_text(element, name) for element in array.ravel()]
    return value_of(np.ascontiguousarray(array).ravel())


def value_of(array: Array) -> object:
    """An array of any shape (or a scalar) for orjson, non-finite floats as NaN/Infinity literals."""
    if array.dtype == np.float16:
        array = array.astype(np.float32)  # orjson writes float32 as its shortest round-tripping decimal
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            return orjson.Fragment(_with_literals(array, finite))
    if array.ndim == 0:
        return array.item()
    return np.ascontiguousarray(array)


def _with_literals(array: Array, finite: npt.NDArray[np.bool_]) -> bytes:
    literals = iter([_literal(float(value)) for value in array[~finite]])
    if array.ndim == 0:
        return next(literals)
    # orjson writes each non-finite float as null, in row-major order, and null nowhere else.
    text = orjson.dumps(np.ascontiguousarray(array), option=orjson.OPT_SERIALIZE_NUMPY)
    return re.sub(rb"null", lambda _: next(literals), text)


def _literal(value: float) -> bytes:
    if math.isnan(value):
        return b"NaN"
    return b"Infinity" if value > 0 else b"-Infinity"


def _text(element: object, name: str) -> str:
    if not isinstance(element, bytes):
        return str(element)
    try:
        return element.decode()
    except UnicodeDecodeError:
        raise ValueError(
            f"output {name!r} holds bytes that are not UTF-8, which JSON cannot carry; "
            'request it as binary (parameters: {"binary_data": true})'
        ) from None
