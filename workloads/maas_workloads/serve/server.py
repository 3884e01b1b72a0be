"""Process entry: settings, logging, the HTTP server, and the drain on SIGTERM.

On the first SIGTERM (or SIGINT) readiness turns 503 at once while requests keep being
answered for `drain_delay_seconds` (so load balancers stop sending new ones), then the
server stops listening, finishes in-flight and queued requests within what is left of
`drain_seconds`, and exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from maas_workloads.contract import ExitCode
from maas_workloads.serve import logs
from maas_workloads.serve.app import App
from maas_workloads.serve.llm.app import OpenAIApp
from maas_workloads.serve.llm.detect import is_causal_lm
from maas_workloads.serve.metrics import Metrics
from maas_workloads.serve.settings import Settings, SettingsError, parse

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: App | OpenAIApp, settings: Settings) -> None:
        super().__init__(config)
        self._app = app
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Replaces uvicorn's handler, which would re-raise the signal after shutdown and so
        # turn a clean drain into death by SIGTERM instead of exit 0.
        if self._app.state.draining or self._loop is None:
            self.should_exit = self.force_exit = True
            return
        self._app.state.begin_drain()
        log.info(
            "draining", extra={"signal": signal.Signals(sig).name, "delay_seconds": self._settings.drain_delay_seconds}
        )
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = asyncio.get_running_loop().create_task(self._stop_after_delay())

    async def _stop_after_delay(self) -> None:
        await asyncio.sleep(self._settings.drain_delay_seconds)
        self.should_exit = True


def build_server(settings: Settings) -> DrainingServer:
    # The artifact decides the protocol: the OpenAI API for causal LMs, OIP v2 for tensor models.
    app: App | OpenAIApp = OpenAIApp(settings) if is_causal_lm(settings.model_uri) else App(settings, Metrics())
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=75,  # longer than typical load balancers' idle timeouts, so they close first
        timeout_graceful_shutdown=max(0, int(settings.drain_seconds - settings.drain_delay_seconds)),
    )
    return DrainingServer(config, app, settings)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse(argv)
    except SettingsError as error:
        print(f"python -m maas_workloads.serve: {error}", file=sys.stderr)
        return ExitCode.CONFIGURATION_ERROR
    logs.configure(settings.log_level)
    log.info(
        "starting",
        extra={
            "model": settings.model_name,
            "uri": settings.model_uri,
            "port": settings.port,
            "auth": settings.auth_token is not None,
            "threads": os.environ.get("OMP_NUM_THREADS"),
        },
    )
    server = build_server(settings)
    server.run()
    return ExitCode.SUCCESS if server.started else ExitCode.APPLICATION_ERROR
