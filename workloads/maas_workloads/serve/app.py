"""The ASGI application of the tensor-model server: routing, OIP and v1 inference, errors, metrics.

It runs behind the shared HTTP layer (`serve.http`), which has already authenticated the
request and read its whole body within the limits when `App` is called.

Hand-written rather than on a framework: the hot path (decode, queue, encode) does no more
work than the protocol needs, which is most of the per-request cost here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Final

import orjson

from maas_workloads.serve import oip, openapi, v1
from maas_workloads.serve.errors import (
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ServeError,
    UnavailableError,
)
from maas_workloads.serve.http.front import HeaderError, Receive, Scope, Send, headers_of, model_lifespan, read_body
from maas_workloads.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from maas_workloads.serve.metrics import Metrics
from maas_workloads.serve.model import LoadedModel
from maas_workloads.serve.settings import Settings
from maas_workloads.serve.state import ModelState

SERVER_NAME: Final = "maas-inference-server"
EXTENSIONS: Final = ["binary_tensor_data", "classification"]
PUBLIC_PATHS: Final = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
"""Served without the bearer token: the probes' paths, and /metrics, which Prometheus scrapes with one
PodMonitor for every ModelService (each has its own token) and the autoscaler reads (as vLLM and Triton)."""
_HEADER_LENGTH_NAME: Final = oip.HEADER_LENGTH.encode()
_HEADER_LENGTH: Final = frozenset({_HEADER_LENGTH_NAME})
_JSON: Final = b"application/json"
_OCTET: Final = b"application/octet-stream"
_PLATFORMS: Final = {"torchscript": "pytorch_torchscript", "torch.export": "pytorch_export", "onnx": "onnxruntime_onnx"}

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return metadata.version("maas-operator")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = _JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_response(document: object, status: int = 200) -> Response:
    return Response(status, orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY))


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    scope: Scope
    receive: Receive
    protocol: str | None = None
    """v1 or v2 on inference requests, which metrics count."""


class App:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_metrics = metrics.for_model(settings.model_name)
        self.state = ModelState(settings, self.model_metrics)
        self._version = _version()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await model_lifespan(receive, send, self.state.load, self.state.close)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = _Request(scope["method"], scope["path"], scope, receive)
        try:
            response = await self._route(request)
        except ServeError as error:
            response = Response(
                error.status,
                orjson.dumps({"error": error.message}),
                headers=[(key.encode(), value.encode()) for key, value in error.headers.items()],
            )
        except Exception:
            log.exception("request failed", extra={"method": request.method, "path": request.path})
            response = Response(500, orjson.dumps({"error": "internal server error; see the server log"}))
        headers = [(b"content-type", response.content_type), (b"content-length", str(len(response.body)).encode())]
        headers.extend(response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
        if request.protocol is not None:
            self.model_metrics.observe_request(request.protocol, response.status, time.perf_counter() - started)

    async def _route(self, request: _Request) -> Response:
        path, method = request.path, request.method
        if path.startswith("/v2/models/"):
            return await self._v2_model(request, path.split("/")[3:])
        if path.startswith("/v1/models/"):
            return await self._v1_model(request, path[len("/v1/models/") :])
        handler = self._static.get(path)
        if handler is None:
            raise NotFoundError(f"no route for {path}; see /openapi.json")
        _allow(method, path, "GET")
        return handler(self)

    def _live(self) -> Response:
        return json_response({"live": True})

    def _ready(self) -> Response:
        if self.state.ready:
            return json_response({"ready": True})
        return json_response({"ready": False, "reason": self.state.readiness_reason()}, 503)

    def _server_metadata(self) -> Response:
        return json_response({"name": SERVER_NAME, "version": self._version, "extensions": EXTENSIONS})

    def _v1_live(self) -> Response:
        return json_response({"status": "alive"})

    def _v1_models(self) -> Response:
        return json_response({"models": [self.settings.model_name]})

    def _metrics(self) -> Response:
        return Response(200, self.metrics.exposition(), METRICS_CONTENT_TYPE.encode())

    def _openapi(self) -> Response:
        model = self.state.model
        document = openapi.document(
            model_name=self.settings.model_name,
            model_version=self.settings.model_version,
            inputs=model.inputs if model else [],
            outputs=model.outputs if model else [],
            auth=self.settings.http.auth_token is not None,
        )
        return json_response(document)

    _static: Final[dict[str, Callable[[App], Response]]] = {
        "/": _v1_live,
        "/v2/health/live": _live,
        "/v2/health/ready": _ready,
        "/v2": _server_metadata,
        "/v1/models": _v1_models,
        "/metrics": _metrics,
        "/openapi.json": _openapi,
    }

    def _check_model(self, name: str, version: str | None) -> None:
        if name != self.settings.model_name:
            raise NotFoundError(f"unknown model {name!r}; this server serves {self.settings.model_name!r}")
        if version is not None and version != self.settings.model_version:
            raise NotFoundError(
                f"model {name!r} has no version {version!r}; this server serves version {self.settings.model_version!r}"
            )

    def _loaded(self) -> LoadedModel:
        model = self.state.model
        if model is None:
            raise UnavailableError(self.state.reason)
        return model

    async def _v2_model(self, request: _Request, parts: list[str]) -> Response:
        # parts: name [versions version] [ready|infer]
        version = None
        if len(parts) >= 3 and parts[1] == "versions":
            version, rest = parts[2], parts[3:]
        else:
            rest = parts[1:]
        if not parts[0] or len(rest) > 1 or (rest and rest[0] not in ("ready", "infer")):
            raise NotFoundError(f"no route for {request.path}; see /openapi.json")
        self._check_model(parts[0], version)
        action = rest[0] if rest else "metadata"
        if action == "infer":
            _allow(request.method, request.path, "POST")
            request.protocol = "v2"
            return await self._infer(request)
        _allow(request.method, request.path, "GET")
        if action == "ready":
            return self._ready()
        model = self._loaded()
        return json_response(
            {
                "name": self.settings.model_name,
                "versions": [self.settings.model_version],
                "platform": _PLATFORMS[model.manifest.format],
                "inputs": [spec.model_dump() for spec in model.inputs],
                "outputs": [spec.model_dump() for spec in model.outputs],
            }
        )

    async def _v1_model(self, request: _Request, rest: str) -> Response:
        name, _, verb = rest.partition(":")
        if "/" in name or verb not in ("", "predict"):
            raise NotFoundError(f"no route for {request.path}; see /openapi.json")
        self._check_model(name, None)
        if verb == "predict":
            _allow(request.method, request.path, "POST")
            request.protocol = "v1"
            return await self._predict_v1(request)
        _allow(request.method, request.path, "GET")
        return json_response({"name": name, "ready": self.state.ready}, 200 if self.state.ready else 503)

    async def _infer(self, request: _Request) -> Response:
        with _Inflight(self.state):
            model = self._loaded()
            body = await read_body(request.receive)
            try:
                declared = headers_of(request.scope, _HEADER_LENGTH).get(_HEADER_LENGTH_NAME)
            except HeaderError as error:
                raise BadRequestError(str(error)) from None
            length = oip.header_length(None if declared is None else declared.decode("latin-1"), len(body))
            inference = oip.decode_request(body, length, model.inputs, model.outputs)
            outputs = await self._run(inference.inputs, inference.rows, inference.timeout_seconds)
            content, json_length = oip.encode_response(
                model_name=self.settings.model_name,
                model_version=self.settings.model_version,
                request=inference,
                outputs=outputs,
                specs=model.outputs,
                labels=model.manifest.labels,
            )
        if json_length is None:
            return Response(200, content)
        return Response(200, content, _OCTET, [(b"inference-header-content-length", str(json_length).encode())])

    async def _predict_v1(self, request: _Request) -> Response:
        with _Inflight(self.state):
            model = self._loaded()
            body = await read_body(request.receive)
            inputs, rows = v1.decode_request(body, model.inputs)
            outputs = await self._run(inputs, rows, None)
            return Response(200, v1.encode_response(outputs, model.outputs))

    async def _run(
        self, inputs: dict[str, oip.Tensor], rows: int, deadline_seconds: float | None
    ) -> dict[str, oip.Tensor]:
        batcher = self.state.batcher
        if batcher is None:
            raise UnavailableError(self.state.reason)
        # A request may ask for a shorter deadline than the server's, never a longer one.
        default = self.settings.timeout_seconds
        deadline = default if deadline_seconds is None else min(deadline_seconds, default)
        return await batcher.submit(inputs, rows, deadline)


class _Inflight:
    """Counts an inference request from its complete arrival to its answer, for the batcher and the gauge.

    The HTTP layer calls the application only once the whole body is in, so a slow or stalled
    upload is never counted (`maas_inference_inflight_requests` is an autoscaling signal).
    """

    def __init__(self, state: ModelState) -> None:
        self._state = state

    def __enter__(self) -> None:
        self._state.inflight += 1
        self._state.metrics.inflight.inc()

    def __exit__(self, *_: object) -> None:
        self._state.inflight -= 1
        self._state.metrics.inflight.dec()


def _allow(method: str, path: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise MethodNotAllowedError(method, path, (allowed,))
