"""Operator start-up and shut-down: kopf settings, the reconcile queue, leader election, the metrics endpoint."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from maas_operator import metrics
from maas_operator.api.modelservice import KIND as MODELSERVICE
from maas_operator.api.trainingjob import KIND as TRAININGJOB
from maas_operator.config import OperatorConfig
from maas_operator.election import Election
from maas_operator.handlers import kopf_settings, memory
from maas_operator.handlers.leadership import LeaderElector, fence, identity
from maas_operator.handlers.modelservice import CHILD_RESOURCES, reconcile_modelservice
from maas_operator.handlers.runtime import (
    MODELSERVICES,
    MODELSERVICES_BY_TRAININGJOB,
    TRAININGJOB_PODS,
    TRAININGJOBS,
    Reconciler,
    Runtime,
    modelservice_children_index,
)
from maas_operator.handlers.trainingjob import reconcile_trainingjob
from maas_operator.state_metrics import StateCollector

log = logging.getLogger(__name__)
INDICES = (
    TRAININGJOBS,
    MODELSERVICES,
    MODELSERVICES_BY_TRAININGJOB,
    TRAININGJOB_PODS,
    *(modelservice_children_index(plural) for _, _, plural in CHILD_RESOURCES.values()),
)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    config: OperatorConfig = memo.get("config") or OperatorConfig.from_env()  # cli.py puts it there
    # Only watch-event handlers are registered: kopf keeps no state on our objects (no annotations,
    # no finalizers); our own queue retries, and garbage collection deletes children.
    settings.peering.standalone = True
    settings.posting.enabled = False
    kopf_settings.configure(settings)
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
    # kopf passes its indices to startup handlers as keyword arguments named by their ids;
    # they fill as the watches list (see runtime.py for why reconciles wait for that).
    indices = {name: kwargs[name] for name in INDICES}
    reconcilers: dict[str, Reconciler] = {TRAININGJOB: reconcile_trainingjob, MODELSERVICE: reconcile_modelservice}
    # --- leader election: several replicas watch, the one holding the Lease reconciles and writes.
    election = Election(identity(config), config.election_timing()) if config.leader_election else None
    may_write = fence(election) if election is not None else None
    runtime = memo.runtime = await Runtime.start(config, reconcilers, indices, may_write)
    if election is not None:
        memo.elector = await LeaderElector.connect(election, config, runtime)
        memo.elector.start()
    metrics.LEADER.set(1 if runtime.leading else 0)
    # ---
    memo.resync = asyncio.create_task(runtime.resync_forever(), name="resync")
    # A follower exports no per-object state: its replicas' series would double every alert.
    memo.state_metrics = StateCollector(lambda: runtime.snapshot() if runtime.leading else [])
    metrics.REGISTRY.register(memo.state_metrics)
    metrics.serve(config.metrics_port)
    memory.tune_garbage_collector()
    log.info("maas-operator started with %s", config.model_dump())


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    elector: LeaderElector | None = getattr(memo, "elector", None)
    if elector is not None:  # stops reconciling, then releases the Lease: a follower takes over at once
        await elector.stop()
    resync: asyncio.Task[None] | None = getattr(memo, "resync", None)
    if resync is not None:
        resync.cancel()
    state_metrics: StateCollector | None = getattr(memo, "state_metrics", None)
    if state_metrics is not None:
        metrics.REGISTRY.unregister(state_metrics)
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.stop()
