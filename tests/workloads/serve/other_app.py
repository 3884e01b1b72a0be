"""A second ASGI application on the shared HTTP layer, as the LLM server uses it.

    python -m tests.workloads.serve.other_app     # settings from the same MAAS_* variables

It has its own error shape (OpenAI's), its own public path and readiness, and counts the
`http.request` messages it receives, to show what every application gets by construction;
`/metrics` shows the layer's own metrics (connections, refusals, certificate reloads).
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from maas_workloads.serve.http import logs
from maas_workloads.serve.http.server import Service, run
from maas_workloads.serve.http.settings import HTTP_FLAGS, http_settings, parse_options


def openai_error(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": status}})


class EchoApp:
    def __init__(self) -> None:
        self.draining = False
        self.registry = CollectorRegistry()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/metrics":
            text = generate_latest(self.registry)
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(text))]}
            )
            await send({"type": "http.response.body", "body": text})
            return
        if scope["path"] == "/health":
            status, document = (503, {"draining": True}) if self.draining else (200, {"ok": True})
        else:
            messages, size = 0, 0
            while True:
                message = await receive()
                messages, size = messages + 1, size + len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            status, document = 200, {"messages": messages, "bytes": size}
        body = orjson.dumps(document)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def begin_drain(self) -> None:
        self.draining = True


def main() -> None:
    settings = http_settings(parse_options([], os.environ, prog="other", description="", flags=HTTP_FLAGS), os.environ)
    logs.configure(settings.log_level)
    app = EchoApp()
    service = Service(
        app, begin_drain=app.begin_drain, public_paths={"/health"}, error_body=openai_error, registry=app.registry
    )
    run(service, settings)


if __name__ == "__main__":
    main()
