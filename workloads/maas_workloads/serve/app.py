"""The ASGI application: routing, authentication, limits, errors, metrics and access logs.

Hand-written rather than on a framework: the hot path (read body, decode, queue, encode)
does no more work than the protocol needs, which is most of the per-request cost here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final

import orjson

from maas_workloads.serve import oip, openapi, v1
from maas_workloads.serve.auth import BearerAuth
from maas_workloads.serve.errors import (
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ServeError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaTypeError,
)
from maas_workloads.serve.logs import AccessLog
from maas_workloads.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from maas_workloads.serve.metrics import Metrics
from maas_workloads.serve.model import LoadedModel
from maas_workloads.serve.settings import Settings
from maas_workloads.serve.state import ModelState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SERVER_NAME: Final = "maas-inference-server"
EXTENSIONS: Final = ["binary_tensor_data", "classification"]
_PUBLIC_PATHS: Final = frozenset({"/v2/health/live", "/v2/health/ready"})
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
    headers: dict[bytes, bytes]
    receive: Receive
    protocol: str | None = None
    """v1 or v2 on inference requests, which metrics count."""


class App:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_metrics = metrics.for_model(settings.model_name)
        self.state = ModelState(settings, self.model_metrics)
        self._auth = BearerAuth(settings.auth_token) if settings.auth_token else None
        self._loading: asyncio.Task[None] | None = None
        self._version = _version()
        self._access_log = AccessLog() if settings.access_log else None
        self._access_log_task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Loading runs in the background: the port answers liveness (and 503 readiness) meanwhile.
                loop = asyncio.get_running_loop()
                self._loading = loop.create_task(self.state.load(), name="load-model")
                if self._access_log is not None:
                    self._access_log_task = loop.create_task(self._access_log.run(), name="access-log")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._loading is not None and not self._loading.done():
                    self._loading.cancel()
                await self.state.close()
                if self._access_log_task is not None:
                    self._access_log_task.cancel()
                    await asyncio.gather(self._access_log_task, return_exceptions=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = _Request(scope["method"], scope["path"], dict(scope["headers"]), receive)
        try:
            if (
                self._auth is not None
                and request.path not in _PUBLIC_PATHS
                and not self._auth.allows(request.headers.get(b"authorization"))
            ):
                raise UnauthorizedError()
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
        seconds = time.perf_counter() - started
        if request.protocol is not None:
            self.model_metrics.observe_request(request.protocol, response.status, seconds)
        if self._access_log is not None:
            client = scope.get("client")
            self._access_log.record(
                {
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "duration_ms": round(seconds * 1000, 3),
                    "response_bytes": len(response.body),
                    "client": client[0] if client else None,
                }
            )

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
            auth=self._auth is not None,
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
            body = await self._read_body(request)
            length = oip.header_length(_header(request, b"inference-header-content-length"), len(body))
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
            body = await self._read_body(request)
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

    async def _read_body(self, request: _Request) -> bytes:
        limit = self.settings.max_request_bytes
        declared = _header(request, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"the body has {declared} bytes; this server takes at most {limit}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise BadRequestError("the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"the body has more than {limit} bytes, this server's limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                return _decompress(body, _header(request, b"content-encoding"), limit)


class _Inflight:
    """Counts an inference request from arrival to answer, for the batcher and the gauge."""

    def __init__(self, state: ModelState) -> None:
        self._state = state

    def __enter__(self) -> None:
        self._state.inflight += 1
        self._state.metrics.inflight.inc()

    def __exit__(self, *_: object) -> None:
        self._state.inflight -= 1
        self._state.metrics.inflight.dec()


# zlib window bits: gzip framing, and zlib framing (what "deflate" means in HTTP).
_ENCODINGS: Final = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its Content-Encoding (Triton's clients can gzip or deflate requests)."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    bits = _ENCODINGS.get(encoding.strip().lower())
    if bits is None:
        raise UnsupportedMediaTypeError(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    decompressor = zlib.decompressobj(bits)
    try:
        # Bounded, so that a small compressed body cannot expand past the limit.
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as error:
        raise BadRequestError(f"the body is not valid {encoding} data: {error}") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLargeError(f"the body decompresses to more than {limit} bytes, this server's limit")
    return data


def _allow(method: str, path: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise MethodNotAllowedError(method, path, (allowed,))


def _header(request: _Request, name: bytes) -> str | None:
    value = request.headers.get(name)
    return None if value is None else value.decode("latin-1")
