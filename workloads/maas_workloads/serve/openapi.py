"""The OpenAPI description of the REST API, specialised to the model this server serves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from maas_workloads.artifact import TensorSpec
from maas_workloads.serve.datatypes import DATATYPES

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "malformed or ambiguous request, a tensor that does not match the model, or values its datatype "
        "cannot carry (the message names the tensor and the rule)",
        401: "missing or wrong bearer token",
        404: "unknown model or version",
        408: "the body did not arrive within the server's body deadline",
        413: "body larger than the server's limit",
        415: "Content-Encoding other than gzip, deflate or identity",
        429: "queue full; retry after the Retry-After header's seconds",
        500: "the model failed on valid input",
        503: "model not ready (loading, failed to load, or draining)",
        504: "no result within the request's deadline",
    }
    return {str(code): _json({"$ref": "#/components/schemas/Error"}, reasons[code]) for code in codes}


def _tensor_schema(specs: Sequence[TensorSpec], *, request: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": {"type": "string", "enum": [spec.name for spec in specs]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": sorted(DATATYPES)},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "flat or nested, row-major"},
    }
    required = ["name", "shape", "datatype"] + (["data"] if request else [])
    return {"type": "object", "properties": properties, "required": required}


def _metadata_tensors(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": spec.name, "datatype": spec.datatype, "shape": spec.shape} for spec in specs]


def document(
    *, model_name: str, model_version: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], auth: bool
) -> dict[str, Any]:
    model = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string", "enum": [model_name]}}
    version = {
        "name": "model_version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": [model_version]},
    }
    public: dict[str, Any] = {"security": []}
    health_ready = {
        "type": "object",
        "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["ready"],
    }
    infer = {
        "summary": "Run inference (Open Inference Protocol v2)",
        "description": (
            "JSON tensors; the binary tensor data extension is also accepted: put the JSON's length in "
            "Inference-Header-Content-Length, give inputs a binary_data_size parameter and append their bytes. "
            "Inference-Header-Content-Length: 0 sends a single-input model's input as the whole body. "
            "JSON numbers may be NaN, Infinity or -Infinity for floating-point tensors. "
            "Request parameters: binary_data_output (bool), timeout (microseconds). Output parameters: "
            "binary_data (bool), classification (top-k)."
        ),
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}},
        },
        "responses": {
            "200": _json({"$ref": "#/components/schemas/InferResponse"}, "the outputs"),
            **_errors(400, 401, 404, 408, 413, 415, 429, 500, 503, 504),
        },
    }
    metadata = {
        "summary": "Model metadata from the artifact's manifest",
        "responses": {
            "200": _json({"$ref": "#/components/schemas/ModelMetadata"}, "metadata"),
            **_errors(401, 404, 503),
        },
    }
    model_ready = {
        "summary": "Whether the model takes requests",
        "responses": {
            "200": _json(health_ready, "ready"),
            **_errors(401, 404),
            "503": _json(health_ready, "not ready"),
        },
    }
    paths: dict[str, Any] = {
        "/v2/health/live": {
            "get": {
                **public,
                "summary": "Liveness",
                "responses": {
                    "200": _json({"type": "object", "properties": {"live": {"type": "boolean"}}}, "the process is live")
                },
            }
        },
        "/v2/health/ready": {
            "get": {
                **public,
                "summary": "Readiness",
                "responses": {
                    "200": _json(health_ready, "ready"),
                    "503": _json(health_ready, "not ready, with the reason"),
                },
            }
        },
        "/v2": {
            "get": {
                "summary": "Server metadata",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/ServerMetadata"}, "metadata"),
                    **_errors(401),
                },
            }
        },
        "/v2/models/{model_name}": {"parameters": [model], "get": metadata},
        "/v2/models/{model_name}/versions/{model_version}": {"parameters": [model, version], "get": metadata},
        "/v2/models/{model_name}/ready": {"parameters": [model], "get": model_ready},
        "/v2/models/{model_name}/versions/{model_version}/ready": {"parameters": [model, version], "get": model_ready},
        "/v2/models/{model_name}/infer": {"parameters": [model], "post": infer},
        "/v2/models/{model_name}/versions/{model_version}/infer": {"parameters": [model, version], "post": infer},
        "/v1/models": {
            "get": {
                "summary": "Models served (KServe v1)",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"models": {"type": "array", "items": {"type": "string"}}}},
                        "names",
                    ),
                    **_errors(401),
                },
            }
        },
        "/v1/models/{model_name}": {
            "parameters": [model],
            "get": {
                "summary": "Model status (KServe v1)",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
                        "status",
                    ),
                    **_errors(401, 404),
                },
            },
        },
        "/v1/models/{model_name}:predict": {
            "parameters": [model],
            "post": {
                "summary": "Predict (KServe v1)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"instances": {"type": "array", "minItems": 1}},
                                "required": ["instances"],
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"predictions": {"type": "array"}}},
                        "one prediction per instance",
                    ),
                    **_errors(400, 401, 404, 408, 413, 415, 429, 500, 503, 504),
                },
            },
        },
        "/": {
            "get": {
                "summary": "Liveness (KServe v1)",
                "responses": {
                    "200": _json({"type": "object", "properties": {"status": {"type": "string"}}}, "alive"),
                    **_errors(401),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This description",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0"), **_errors(401)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401),
                },
            }
        },
    }
    schemas = {
        "Error": _ERROR,
        "ServerMetadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name", "version", "extensions"],
        },
        "ModelMetadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array"},
                "outputs": {"type": "array"},
            },
            "required": ["name", "platform", "inputs", "outputs"],
            "example": {
                "name": model_name,
                "versions": [model_version],
                "platform": "pytorch_torchscript",
                "inputs": _metadata_tensors(inputs),
                "outputs": _metadata_tensors(outputs),
            },
        },
        "InferRequest": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "minItems": 1, "items": _tensor_schema(inputs, request=True)},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "enum": [spec.name for spec in outputs]},
                            "parameters": {"type": "object"},
                        },
                        "required": ["name"],
                    },
                },
            },
            "required": ["inputs"],
        },
        "InferResponse": {
            "type": "object",
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": _tensor_schema(outputs, request=False)},
            },
            "required": ["model_name", "outputs"],
        },
    }
    components: dict[str, Any] = {"schemas": schemas}
    result: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": f"maas inference server: {model_name}", "version": model_version},
        "paths": paths,
        "components": components,
    }
    if auth:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        result["security"] = [{"bearer": []}]
    return result
