"""Open Inference Protocol datatypes and their numpy/torch counterparts.

Tensors travel through the server as numpy arrays: BYTES as object arrays of `bytes`, BF16
(which numpy lacks) as float32 holding exactly representable values.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import torch

NUMPY_DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.float32),
    "BYTES": np.dtype(np.object_),
}
DATATYPES: Final = frozenset(NUMPY_DTYPES)

TORCH_DTYPES: Final[dict[str, torch.dtype]] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
_FROM_TORCH: Final = {dtype: name for name, dtype in TORCH_DTYPES.items()}

# Little-endian on the wire, as the binary tensor data extension specifies.
_WIRE_DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    name: dtype.newbyteorder("<") for name, dtype in NUMPY_DTYPES.items() if name not in ("BYTES", "BF16")
}
_BF16_WIRE: Final = np.dtype("<u2")


def element_size(datatype: str) -> int | None:
    """Bytes per element on the wire; None for BYTES, whose elements vary."""
    if datatype == "BYTES":
        return None
    if datatype == "BF16":
        return 2
    return _WIRE_DTYPES[datatype].itemsize


def datatype_of_torch(dtype: torch.dtype) -> str:
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise ValueError(f"torch dtype {dtype} has no Open Inference Protocol datatype") from None


def from_json_data(data: object, datatype: str, shape: list[int], *, name: str) -> npt.NDArray[np.generic]:
    """A tensor from the JSON `data` field (flat or nested, row-major) for a validated shape."""
    count = int(np.prod(shape, dtype=np.int64))
    try:
        if datatype == "BYTES":
            flat = np.empty(count, dtype=np.object_)
            values = list(_flatten(data))
            if len(values) != count:
                raise ValueError(f"{len(values)} elements for shape {shape}")
            for index, value in enumerate(values):
                if isinstance(value, str):
                    flat[index] = value.encode()
                elif isinstance(value, bytes):
                    flat[index] = value
                else:
                    raise ValueError(f"element {index} is {type(value).__name__}, not a string")
            return flat.reshape(shape)
        array = _numeric(np.asarray(data), datatype)
    except (ValueError, TypeError, OverflowError) as error:
        raise ValueError(f"input {name!r}: data does not hold {datatype} values for shape {shape}: {error}") from None
    if array.size != count:
        raise ValueError(f"input {name!r}: data has {array.size} elements, shape {shape} needs {count}")
    return array.reshape(shape)


_ACCEPTED_KINDS: Final = {"BOOL": "b", "FP16": "fiu", "BF16": "fiu", "FP32": "fiu", "FP64": "fiu"}


def _numeric(raw: npt.NDArray[np.generic], datatype: str) -> npt.NDArray[np.generic]:
    """JSON numbers as the datatype, refusing values it cannot hold instead of truncating them."""
    target = NUMPY_DTYPES[datatype]
    accepted = _ACCEPTED_KINDS.get(datatype, "iu")
    if raw.size and raw.dtype.kind not in accepted:
        raise ValueError(f"got {raw.dtype.kind!r} values ({raw.dtype})")
    if raw.size and target.kind in "iu":
        limits = np.iinfo(target)  # type: ignore[type-var]
        if raw.min() < limits.min or raw.max() > limits.max:
            raise ValueError(f"values out of range [{limits.min}, {limits.max}]")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return raw.astype(target, copy=False)
    except FloatingPointError:
        raise ValueError(f"values out of the range of {datatype}") from None


def _flatten(data: object) -> list[object]:
    if not isinstance(data, list):
        return [data]
    flat: list[object] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def from_bytes(raw: bytes | memoryview, datatype: str, shape: list[int], *, name: str) -> npt.NDArray[np.generic]:
    """A tensor from its binary tensor data extension encoding."""
    count = int(np.prod(shape, dtype=np.int64))
    if datatype == "BYTES":
        return _bytes_elements(raw, count, name=name).reshape(shape)
    size = element_size(datatype)
    assert size is not None
    if len(raw) != count * size:
        raise ValueError(
            f"input {name!r}: {len(raw)} bytes of binary data, but {datatype} with shape {shape} needs {count * size}"
        )
    if datatype == "BF16":
        bits = np.frombuffer(raw, dtype=_BF16_WIRE).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    array = np.frombuffer(raw, dtype=_WIRE_DTYPES[datatype]).reshape(shape)
    if datatype == "BOOL" and array.view(np.uint8).max(initial=0) > 1:
        raise ValueError(f"input {name!r}: BOOL bytes must be 0 or 1")
    return array


def _bytes_elements(raw: bytes | memoryview, count: int, *, name: str) -> npt.NDArray[np.object_]:
    view = memoryview(raw)
    elements = np.empty(count, dtype=np.object_)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise ValueError(f"input {name!r}: BYTES data ends before element {index} of {count}")
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(view):
            raise ValueError(f"input {name!r}: BYTES element {index} claims {length} bytes past the end of the data")
        elements[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise ValueError(f"input {name!r}: {len(view) - offset} bytes left over after {count} BYTES elements")
    return elements


def to_bytes(array: npt.NDArray[np.generic], datatype: str) -> bytes:
    """The binary tensor data extension encoding of a tensor."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for element in array.ravel():
            value = element if isinstance(element, bytes) else str(element).encode()
            parts.append(len(value).to_bytes(4, "little"))
            parts.append(value)
        return b"".join(parts)
    if datatype == "BF16":
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32) >> 16
        return bits.astype(_BF16_WIRE).tobytes()
    return np.ascontiguousarray(array, dtype=_WIRE_DTYPES[datatype]).tobytes()


def to_json_data(array: npt.NDArray[np.generic], datatype: str) -> object:
    """The flat, row-major JSON `data` of a tensor (numpy arrays are serialised by orjson)."""
    if datatype == "BYTES":
        return [_text(element) for element in array.ravel()]
    flat = np.ascontiguousarray(array).ravel()
    if flat.dtype == np.float16:
        # orjson serialises float16 arrays, but JSON has one number type: send float32 values.
        return flat.astype(np.float32)
    return flat


def _text(element: object) -> str:
    if isinstance(element, bytes):
        return element.decode("utf-8", errors="backslashreplace")
    return str(element)


def from_json_array(data: object, datatype: str, *, name: str) -> npt.NDArray[np.generic]:
    """A tensor whose shape is the nesting of the JSON lists, as KServe v1 `instances` give it."""
    if datatype == "BYTES":
        raise ValueError(f"input {name!r} is BYTES, which the v1 protocol cannot carry here; use v2")
    try:
        return _numeric(np.asarray(data), datatype)
    except (ValueError, TypeError, OverflowError) as error:
        raise ValueError(f"input {name!r}: instances do not hold {datatype} values of one shape: {error}") from None
