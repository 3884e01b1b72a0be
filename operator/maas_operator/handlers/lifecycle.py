"""Operator start-up and shut-down: kopf settings, API client, metrics endpoint."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from maas_operator import metrics
from maas_operator.builders.meta import FIELD_MANAGER
from maas_operator.config import OperatorConfig
from maas_operator.handlers.runtime import Runtime
from maas_workloads.contract import API_GROUP


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = OperatorConfig.from_env()
    # kopf's bookkeeping lives in our annotations, never in status (status is public API).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/cleanup"
    settings.peering.standalone = True
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
    settings.batching.error_delays = [1, 2, 5, 10, 30]
    memo.runtime = await Runtime.start(config)
    metrics.serve(config.metrics_port)
    logging.getLogger(__name__).info(
        "maas-operator started as field manager %s with %s", FIELD_MANAGER, config.model_dump()
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.stop()
