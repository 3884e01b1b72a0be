"""Leader election for several operator replicas: one of them reconciles, the others keep their
watches and indices current (so that taking over needs no relist) and write nothing.

The loop acquires, renews and releases the Lease with the decisions of election.py through
kube/lease.py, on an API client of its own (reconcile traffic never delays a renew). The
Runtime starts reconciling when this replica starts leading and stops, every reconcile
cancelled, when it stops: the moment a renew is overdue (renewDeadline), before any other
replica may take the Lease (leaseDuration). Every write the reconciles send is checked against
the same deadline first (KubeClient's `may_write`), so a write can only be in flight past it,
never start past it.

On shutdown (SIGTERM: kopf's cleanup) the leader stops reconciling, then releases the Lease, so
a follower takes over at its next try (within 1.2 x retryPeriod) instead of after leaseDuration.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import kopf

from maas_operator import metrics
from maas_operator.config import OperatorConfig
from maas_operator.election import Create, Election, LeaseRecord, Update, Wait
from maas_operator.handlers.runtime import Runtime
from maas_operator.kube.client import KubeClient, KubeError
from maas_operator.kube.lease import LeaseClient, pod_namespace

log = logging.getLogger(__name__)
LEASE_ERRORS = (KubeError, aiohttp.ClientError, OSError, TimeoutError)


def identity(config: OperatorConfig) -> str:
    """This replica's holderIdentity: the configured one, else the host name (in a pod: its name)."""
    return config.leader_election_identity or socket.gethostname()


def lease_namespace(config: OperatorConfig) -> str:
    """Raises ValueError when neither the setting nor the pod's own namespace gives one."""
    namespace = config.leader_election_namespace or pod_namespace()
    if not namespace:
        raise ValueError(
            "leader election needs the Lease's namespace: set MAAS_OPERATOR_LEADER_ELECTION_NAMESPACE "
            "(in a pod it defaults to the pod's own namespace)"
        )
    return namespace


def fence(election: Election) -> Callable[[], bool]:
    """Whether this replica may write now: it leads, and its renew deadline has not passed."""
    return lambda: election.is_leader(time.monotonic())


class Reconciling(Protocol):
    """What the elector drives: the Runtime."""

    def start_leading(self) -> None: ...

    async def stop_leading(self) -> None: ...


class LeaderElector:
    """Runs `election` against `leases` and starts or stops `runtime`'s reconciles accordingly."""

    def __init__(self, election: Election, leases: LeaseClient, runtime: Reconciling) -> None:
        self.election = election
        self.leases = leases
        self.runtime = runtime
        self.leading = False
        """Whether the runtime currently reconciles as the leader."""
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""

    @classmethod
    async def connect(cls, election: Election, config: OperatorConfig, runtime: Reconciling) -> LeaderElector:
        kube = await KubeClient.connect()
        return cls(election, LeaseClient(kube, lease_namespace(config), config.leader_election_lease_name), runtime)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="leader-election")

    async def run(self) -> None:
        log.info("%s: %s is a candidate", self.leases.describe(), self.election.identity)
        while True:
            try:
                await self.try_acquire_or_renew()
                await self.follow()
            except Exception:  # a bug here must not end the loop: the deadline would never be enforced
                log.exception("%s: leader election round failed", self.leases.describe())
            await asyncio.sleep(self.election.retry_in(time.monotonic(), random.random()))
            await self.follow()  # the deadline may have passed while sleeping

    async def try_acquire_or_renew(self) -> None:
        """One round: renew (the holder's fast path), else read the Lease and act on it."""
        election = self.election
        budget = self._budget()
        try:
            async with asyncio.timeout(budget):
                renewal = election.renewal(time.monotonic(), _now())
                if renewal is not None and await self._write(renewal):
                    return
                read_at = time.monotonic()
                step = election.read(await self.leases.get(), read_at, _now())
                if isinstance(step, Wait):
                    self._report("")
                    return
                await self._write(step)
        except LEASE_ERRORS as error:
            election.refused()
            self._report(f"cannot read or write {self.leases.describe()}: {error}")

    async def _write(self, step: Create | Update) -> bool:
        sent_at = time.monotonic()
        stored: LeaseRecord | None
        if isinstance(step, Create):
            stored = await self.leases.create(step.record)
        else:
            stored = await self.leases.update(step.record)
        if stored is None:  # 409: another candidate wrote first
            self.election.refused()
            return False
        self.election.written(stored, sent_at)
        self._report("")
        return True

    def _budget(self) -> float:
        """How long one round may take: renewDeadline, and for the leader at most until its deadline."""
        deadline = self.election.timing.renew_deadline_seconds
        until = self.election.leading_until()
        if until is not None and self.leading:
            return max(0.001, min(deadline, until - time.monotonic()))
        return deadline

    async def follow(self) -> None:
        """Start or stop reconciling as the election now says."""
        leader = self.election.is_leader(time.monotonic())
        if leader and not self.leading:
            self.leading = True
            metrics.LEADER.set(1)
            metrics.LEADER_TRANSITIONS.inc()
            log.info("%s: %s started leading", self.leases.describe(), self.election.identity)
            self.runtime.start_leading()
        elif not leader and self.leading:
            self.leading = False
            metrics.LEADER.set(0)
            holder = self.election.holder()
            log.warning(
                "%s: %s stopped leading (%s)",
                self.leases.describe(),
                self.election.identity,
                f"now held by {holder}" if holder and holder != self.election.identity else "no renew in time",
            )
            await self.runtime.stop_leading()

    async def stop(self) -> None:
        """Stop competing; a leader stops reconciling first, then releases the Lease."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.leading:
            self.leading = False
            metrics.LEADER.set(0)
            await self.runtime.stop_leading()
        release = self.election.release(_now())
        if release is not None:
            try:
                async with asyncio.timeout(self.election.timing.renew_deadline_seconds):
                    released = await self.leases.update(release.record)
            except LEASE_ERRORS as error:
                released = None
                log.warning("%s: could not release it: %s", self.leases.describe(), error)
            if released is not None:
                self.election.written(released, time.monotonic())
                log.info("%s: released by %s", self.leases.describe(), self.election.identity)
        await self.leases.kube.close()

    def _report(self, error: str) -> None:
        """Log a failing round once per distinct error, and when it recovers."""
        if error and error != self._last_error:
            log.warning("%s", error)
        elif not error and self._last_error:
            log.info("%s: reachable again", self.leases.describe())
        self._last_error = error


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@kopf.on.probe(id="leader")
async def leader_probe(memo: kopf.Memo, **_: Any) -> bool:
    """/healthz reports whether this replica leads; a follower is as healthy as the leader."""
    runtime: Runtime | None = getattr(memo, "runtime", None)
    return bool(runtime is not None and runtime.leading)
