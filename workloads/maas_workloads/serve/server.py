"""Process entry of the tensor-model server: settings, logging, then the shared HTTP layer.

Everything about connections, limits, authentication and the drain on SIGTERM lives in
`maas_workloads.serve.http`; this module only hands it the OIP application.
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
from maas_workloads.serve.metrics import Metrics
from maas_workloads.serve.settings import SettingsError, parse

log = logging.getLogger(__name__)


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
            "threads": os.environ.get("OMP_NUM_THREADS"),
        },
    )
    metrics = Metrics()
    app = App(settings, metrics)
    service = Service(app, begin_drain=app.state.begin_drain, public_paths=PUBLIC_PATHS, registry=metrics.registry)
    try:
        started = run(service, settings.http)
    except SettingsError as error:
        log.error("cannot start", extra={"reason": str(error)})
        return ExitCode.CONFIGURATION_ERROR
    return ExitCode.SUCCESS if started else ExitCode.APPLICATION_ERROR
