"""KServe's v1 prediction protocol: `{"instances": [...]}` in, `{"predictions": [...]}` out.

With one input, each instance is that input's row; with several, each instance is an object
mapping input names to rows. With one output, each prediction is its row; with several, an
object mapping output names to rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from maas_workloads.artifact import TensorSpec
from maas_workloads.serve import jsoncodec
from maas_workloads.serve.errors import BadRequestError
from maas_workloads.serve.oip import Tensor, check_shape, parse_json


def decode_request(body: bytes, specs: Sequence[TensorSpec]) -> tuple[dict[str, Tensor], int]:
    document = parse_json(body, "the request")
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise BadRequestError('the request must be a JSON object with a non-empty "instances" list')
    if len(specs) == 1:
        columns: dict[str, object] = {specs[0].name: instances}
    else:
        columns = _columns(instances, specs)
    inputs: dict[str, Tensor] = {}
    try:
        for spec in specs:
            array = jsoncodec.tensor_from_instances(columns[spec.name], spec.datatype, name=spec.name)
            check_shape(spec.name, array.shape, spec)
            inputs[spec.name] = array
    except ValueError as error:
        raise BadRequestError(str(error)) from None
    return inputs, len(instances)


def _columns(instances: list[object], specs: Sequence[TensorSpec]) -> dict[str, object]:
    names = [spec.name for spec in specs]
    columns: dict[str, list[object]] = {name: [] for name in names}
    for position, instance in enumerate(instances):
        if not isinstance(instance, dict) or set(instance) != set(names):
            raise BadRequestError(f"instances[{position}] must be an object with exactly the inputs {names}")
        for name in names:
            columns[name].append(instance[name])
    return dict(columns)


def encode_response(outputs: Mapping[str, Tensor], specs: Sequence[TensorSpec]) -> bytes:
    """`{"predictions": [...]}`; non-finite floats as NaN/Infinity literals (see `jsoncodec`)."""
    if len(specs) == 1:
        predictions: object = jsoncodec.value_of(outputs[specs[0].name])
    else:
        rows = next(iter(outputs.values())).shape[0]
        predictions = [
            {spec.name: jsoncodec.value_of(outputs[spec.name][row]) for spec in specs} for row in range(rows)
        ]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
