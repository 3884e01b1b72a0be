"""Open Inference Protocol datatypes, their numpy/torch counterparts, and the binary encoding.

Tensors travel through the server as numpy arrays: BYTES as object arrays of `bytes`, BF16
(which numpy lacks) as float32 holding exactly representable values. The binary tensor data
extension carries every value exactly; the JSON encoding, and what it refuses, is `jsoncodec`.
"""

from __future__ import annotations

import math
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
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}

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


def from_bytes(raw: bytes | memoryview, datatype: str, shape: list[int], *, name: str) -> npt.NDArray[np.generic]:
    """A tensor from its binary tensor data extension encoding; ValueError when the size does not fit."""
    count = math.prod(shape)
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
