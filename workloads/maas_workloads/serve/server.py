"""Process entry of the model server: settings, logging, the application the artifact calls for,
then the shared HTTP layer.

The artifact decides the protocol: the OpenAI API for causal LMs (`llm.app.OpenAIApp`), the
Open Inference Protocol for tensor models (`app.App`). Everything about connections, limits,
authentication, the access log and the drain on SIGTERM lives in `maas_workloads.serve.http`,
the same for both.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from maas_workloads.contract import ExitCode
from maas_workloads.serve.app import PUBLIC_PATHS, App
from maas_workloads.serve.http import logs
from maas_workloads.serve.http.server import Service, run
from maas_workloads.serve.llm.app import PUBLIC_PATHS as LLM_PUBLIC_PATHS
from maas_workloads.serve.llm.app import OpenAIApp
from maas_workloads.serve.llm.detect import is_causal_lm
from maas_workloads.serve.llm.errors import http_error_body
from maas_workloads.serve.metrics import Metrics
from maas_workloads.serve.settings import Settings, SettingsError, parse

log = logging.getLogger(__name__)


def service(settings: Settings) -> Service:
    """The application for the artifact at `settings.model_uri`, as the HTTP layer serves it."""
    if is_causal_lm(settings.model_uri):
        llm = OpenAIApp(settings)
        return Service(
            llm,
            begin_drain=llm.state.begin_drain,
            public_paths=LLM_PUBLIC_PATHS,
            error_body=http_error_body,
            registry=llm.metrics.registry,
        )
    metrics = Metrics()
    app = App(settings, metrics)
    return Service(app, begin_drain=app.state.begin_drain, public_paths=PUBLIC_PATHS, registry=metrics.registry)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse(argv)
    except SettingsError as error:
        print(f"python -m maas_workloads.serve: {error}", file=sys.stderr)
        return ExitCode.CONFIGURATION_ERROR
    logs.configure(settings.http.log_level)
    log.info(
        "starting",
        extra={
            "model": settings.model_name,
            "uri": settings.model_uri,
            "port": settings.http.port,
            "auth": settings.http.auth_token is not None,
            "tls": settings.http.tls is not None,
            "threads": os.environ.get("OMP_NUM_THREADS"),
        },
    )
    try:
        started = run(service(settings), settings.http)
    except SettingsError as error:
        log.error("cannot start", extra={"reason": str(error)})
        return ExitCode.CONFIGURATION_ERROR
    return ExitCode.SUCCESS if started else ExitCode.APPLICATION_ERROR
