"""The OpenAI-compatible ASGI application, with vLLM's HTTP contract.

Routes: `/v1/models`, `/v1/completions`, `/v1/chat/completions` (JSON, or server-sent events
ending `data: [DONE]`), `/health` (200 only once loaded and warmed up), `/metrics`,
`/version`; `/v2/health/live` and `/v2/health/ready` too, so the probes of any ModelService
pod work whatever the artifact turns out to be. Like vLLM's `--api-key`, the bearer token
guards `/v1/*`; health, metrics and version stay open for probes and Prometheus
(`PUBLIC_PATHS`). It runs behind the shared HTTP layer (`serve.http`), which checks the
token, bounds and reads the whole body, and writes the access log before a request gets here.

A client that disconnects cancels its generation (the engine frees its KV blocks at its
next step); after SIGTERM health answers 503 and new generations 503, while the server
finishes the streams in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson

from maas_workloads.serve.http.front import Receive, Scope, Send, model_lifespan, read_body
from maas_workloads.serve.llm import responses
from maas_workloads.serve.llm.errors import OpenAIError
from maas_workloads.serve.llm.generation import Generation, prepare
from maas_workloads.serve.llm.metrics import LLMMetrics
from maas_workloads.serve.llm.protocol import ChatCompletionRequest, CompletionRequest, parse
from maas_workloads.serve.llm.state import LLMState
from maas_workloads.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from maas_workloads.serve.settings import Settings

_JSON: Final = b"application/json"
_SSE_HEADERS: Final = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_DONE: Final = b"data: [DONE]\n\n"
PUBLIC_PATHS: Final = frozenset({"/health", "/v2/health/live", "/v2/health/ready", "/metrics", "/version"})
"""Served without the bearer token: the probes, Prometheus and the version, as vLLM does."""

log = logging.getLogger(__name__)


class _DisconnectedError(Exception):
    """The client went away while its request was running."""


class OpenAIApp:
    """ASGI app serving one causal LM; `state` is what the server's drain logic drives."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = LLMMetrics(settings.model_name)
        self.state = LLMState(settings, self.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await model_lifespan(receive, send, self.state.load, self.state.close)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        status = 500
        try:
            if path in ("/v1/completions", "/v1/chat/completions"):
                _allow(method, path, "POST")
                status = await self._generate(path, receive, send, started)
            else:
                _allow(method, path, "GET")
                status = await self._get(path, send)
        except OpenAIError as error:
            status = error.status
            await _respond(
                send, status, error.body(), extra=[(k.encode(), v.encode()) for k, v in error.headers.items()]
            )
        except _DisconnectedError:
            status = 499  # nginx's "client closed request": nothing was sent, nothing can be
        except Exception:
            log.exception("request failed", extra={"method": method, "path": path})
            status = 500
            await _respond(send, 500, OpenAIError(500, "internal server error; see the server log").body())
        if path.startswith("/v1/"):
            self.metrics.request(status)

    async def _get(self, path: str, send: Send) -> int:
        state = self.state
        if path in ("/health", "/v2/health/ready"):
            if state.ready:
                body = b"" if path == "/health" else b'{"ready":true}'
                return await _respond(send, 200, body)
            document = {"ready": False, "reason": state.readiness_reason()}
            return await _respond(send, 503, orjson.dumps(document))
        if path == "/v2/health/live":
            return await _respond(send, 200, b'{"live":true}')
        if path == "/metrics":
            return await _respond(send, 200, self.metrics.exposition(), METRICS_CONTENT_TYPE.encode())
        if path == "/version":
            return await _respond(send, 200, orjson.dumps({"version": responses.server_version()}))
        if path == "/v1/models":
            return await _respond(send, 200, orjson.dumps(responses.models(self.settings, state.max_model_len)))
        raise OpenAIError(404, f"no route for {path}", code="not_found")

    async def _generate(self, path: str, receive: Receive, send: Send, arrived: float) -> int:
        body = await read_body(receive)
        request: ChatCompletionRequest | CompletionRequest
        if path == "/v1/chat/completions":
            request = parse(ChatCompletionRequest, body)
        else:
            request = parse(CompletionRequest, body)
        if request.model != self.settings.model_name:
            raise OpenAIError(
                404, f"The model `{request.model}` does not exist.", param="model", code="model_not_found"
            )
        engine = self.state.admit()
        with self.state.inflight():
            generation = Generation(engine, self.state.slots, self.metrics, prepare(engine, request), arrived)
            chat = isinstance(request, ChatCompletionRequest)
            shape = responses.Shape(
                chat, f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", self.settings.model_name
            )
            watcher = asyncio.create_task(_watch_disconnect(receive, asyncio.current_task()))
            try:
                if request.stream:
                    return await self._stream(generation, shape, request.include_usage, send)
                return await self._complete(generation, shape, send)
            except asyncio.CancelledError:
                if watcher.done() and not watcher.cancelled() and watcher.result():
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    raise _DisconnectedError() from None
                raise
            finally:
                watcher.cancel()

    async def _complete(self, generation: Generation, shape: responses.Shape, send: Send) -> int:
        texts: dict[int, list[str]] = {}
        finished: dict[int, tuple[str, str | None]] = {}
        async with contextlib.aclosing(generation.events()) as events:
            async for event in events:
                texts.setdefault(event.index, []).append(event.text)
                if event.finish_reason is not None:
                    finished[event.index] = (event.finish_reason, event.stop_reason)
        document = shape.complete(texts, finished, generation.plan.usage)
        return await _respond(send, 200, orjson.dumps(document))

    async def _stream(self, generation: Generation, shape: responses.Shape, usage: bool, send: Send) -> int:
        events = generation.events()
        # Admission (and its 429) happens before the first event: only then does the 200 go out.
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = None
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        try:
            for chunk in shape.opening(len(generation.plan.choices), usage):
                await _event(send, chunk)
            if first is not None:
                async for event in _chain(first, events):
                    await _event(send, shape.chunk(event, usage))
            if usage:
                await _event(send, shape.usage_chunk(generation.plan.usage))
        except Exception as error:  # headers are out: the error travels as an event
            log.warning("stream failed", extra={"error": str(error)})
            failure = error if isinstance(error, OpenAIError) else OpenAIError(500, f"generation failed: {error}")
            await send({"type": "http.response.body", "body": b"data: " + failure.body() + b"\n\n", "more_body": True})
        finally:
            await events.aclose()
        await send({"type": "http.response.body", "body": _DONE, "more_body": False})
        return 200


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


async def _event(send: Send, document: dict[str, Any]) -> None:
    await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(document) + b"\n\n", "more_body": True})


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any] | None) -> bool:
    """Cancel `task` when the client disconnects; returns True when it did."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if task is not None:
                task.cancel()
            return True


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes = _JSON, extra: list[tuple[bytes, bytes]] | None = None
) -> int:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


def _allow(method: str, path: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise OpenAIError(405, f"{method} is not allowed on {path}", headers={"allow": allowed})
