"""Leader election on a coordination.k8s.io/v1 Lease: the decisions, as pure functions of the
Lease read from the API server and this process's monotonic clock (no I/O here; the loop that
reads and writes the Lease is handlers/leadership.py, the API calls kube/lease.py).

The rules are client-go's (k8s.io/client-go/tools/leaderelection, leaderelection.go,
`tryAcquireOrRenew`, `renew`, `release`):

- Expiry is judged on local time only: a candidate may take a Lease held by another once the
  Lease's record has not changed for `leaseDurationSeconds` since *this candidate* saw it change.
  Clocks of different nodes are never compared (tolerant to skew, not to rate differences beyond
  leaseDuration / renewDeadline).
- Every write carries the resourceVersion that was read (optimistic concurrency): of two
  candidates that both see the Lease free, the API server accepts one write and answers the
  other 409 Conflict.
- The holder renews every retryPeriod and stops leading once renewDeadline has passed without a
  successful renew: renewDeadline < leaseDuration, so it has stopped before anyone may take over.
- A holder that shuts down releases the Lease (holder "", leaseDurationSeconds 1) after it has
  stopped working, so a candidate takes it at its next try instead of after leaseDuration.

Two rules are stricter than client-go's: the renew deadline counts from when the last successful
renew was *sent* (client-go: from the start of the next renew round, a retryPeriod later), and a
holder that reads a Lease naming someone else, or no Lease at all, stops leading at once.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace

RELEASED_LEASE_DURATION_SECONDS = 1
"""What a released Lease says (client-go's `release`)."""
ACQUIRE_JITTER = 0.2
"""A candidate retries every retryPeriod * (1 + up to 0.2): candidates drift apart instead of
polling in step. client-go jitters by up to 1.2 (`JitterFactor`); a smaller one bounds the wait
after a graceful release at 1.2 x retryPeriod (2.4 s by default)."""


@dataclass(frozen=True)
class Timing:
    """client-go's defaults, which kube-controller-manager, kube-scheduler and controller-runtime
    also use (LeaderElectionConfig: "Core clients default this value to 15 / 10 / 2 seconds").

    Raises ValueError unless 0 < retryPeriod * (1 + ACQUIRE_JITTER) < renewDeadline < leaseDuration
    (client-go's NewLeaderElector checks the same order).
    """

    lease_duration_seconds: int = 15
    """How long candidates wait, after the record last changed, before taking the Lease."""
    renew_deadline_seconds: float = 10.0
    """How long the holder keeps leading without a successful renew."""
    retry_period_seconds: float = 2.0
    """How often the holder renews and candidates try to acquire."""

    def __post_init__(self) -> None:
        if self.retry_period_seconds <= 0:
            raise ValueError("retryPeriod must be greater than 0")
        if self.renew_deadline_seconds <= self.retry_period_seconds * (1 + ACQUIRE_JITTER):
            raise ValueError("renewDeadline must be greater than retryPeriod x 1.2 (at least one renew must fit)")
        if self.lease_duration_seconds <= self.renew_deadline_seconds:
            raise ValueError("leaseDuration must be greater than renewDeadline (the holder must stop first)")


@dataclass(frozen=True)
class LeaseRecord:
    """The spec of a Lease (coordination.k8s.io/v1) and the resourceVersion it was read at."""

    holder: str = ""
    """spec.holderIdentity; "" when released."""
    lease_duration_seconds: int = 0
    acquire_time: datetime.datetime | None = None
    renew_time: datetime.datetime | None = None
    transitions: int = 0
    """spec.leaseTransitions: how many times the holder changed."""
    resource_version: str = ""
    """metadata.resourceVersion; "" when unknown (e.g. just created: the next write reads first)."""


@dataclass(frozen=True)
class Create:
    """Create the Lease with this record (it does not exist)."""

    record: LeaseRecord


@dataclass(frozen=True)
class Update:
    """Replace the Lease's spec with this record, if its resourceVersion is still `record.resource_version`."""

    record: LeaseRecord


@dataclass(frozen=True)
class Wait:
    """Another holder's Lease is valid (for at most `expires_in` more seconds, as seen from here)."""

    holder: str
    expires_in: float


Step = Create | Update | Wait


class Election:
    """One candidate's view of the election. Times are this process's `time.monotonic()` seconds;
    `wall` times only go into the record, for humans (nobody compares them).

    Use: `renewal()` first (the holder's fast path: write without reading), else `read()` on the
    Lease just fetched; perform the returned step and report it with `written()` or `refused()`.
    """

    def __init__(self, identity: str, timing: Timing) -> None:
        if not identity:
            raise ValueError("a leader election candidate needs an identity (the pod's name)")
        self.identity = identity
        self.timing = timing
        self.observed: LeaseRecord | None = None
        """The record last read or written."""
        self.observed_at = 0.0
        """When `observed` last changed (client-go's observedTime)."""
        self.renewed_at: float | None = None
        """When the last successful acquire or renew was sent; None while not holding the Lease."""
        self.stale = False
        """A write failed: `observed` may be out of date, so the next try reads first."""

    # --- leadership -----------------------------------------------------------------------
    def leading_until(self) -> float | None:
        """Until when this candidate may act as the leader; None when it does not hold the Lease."""
        if self.renewed_at is None:
            return None
        return self.renewed_at + self.timing.renew_deadline_seconds

    def is_leader(self, now: float) -> bool:
        """True while this candidate holds the Lease and its last renew is younger than renewDeadline."""
        until = self.leading_until()
        return until is not None and now < until

    def holder(self) -> str:
        """Who holds the Lease as last observed ("" when nobody or unknown)."""
        return self.observed.holder if self.observed is not None else ""

    # --- decisions ------------------------------------------------------------------------
    def renewal(self, now: float, wall: datetime.datetime) -> Update | None:
        """The holder's renew without a read first (client-go's fast path); None: read the Lease first."""
        observed = self.observed
        if self.stale or not self.is_leader(now) or observed is None or not observed.resource_version:
            return None
        return Update(replace(observed, renew_time=wall, lease_duration_seconds=self.timing.lease_duration_seconds))

    def read(self, current: LeaseRecord | None, now: float, wall: datetime.datetime) -> Step:
        """What to do about the Lease just read at `now` (None: it does not exist)."""
        duration = self.timing.lease_duration_seconds
        self.stale = False
        if current is None:
            self.renewed_at = None  # whatever we held, nobody can tell now: stop, then compete again
            self.observed = None
            return Create(LeaseRecord(self.identity, duration, wall, wall, 0))
        if current != self.observed:
            self.observed, self.observed_at = current, now
        if current.holder == self.identity:  # ours (maybe from before a restart): renew
            return Update(replace(current, lease_duration_seconds=duration, renew_time=wall))
        self.renewed_at = None  # someone else's name is on it: we do not lead, whatever our deadline says
        expires_in = self.observed_at + current.lease_duration_seconds - now
        if current.holder and expires_in > 0:
            return Wait(current.holder, expires_in)
        taken = LeaseRecord(self.identity, duration, wall, wall, current.transitions + 1, current.resource_version)
        return Update(taken)

    def written(self, stored: LeaseRecord, sent_at: float) -> None:
        """The API server stored a Create or Update; `stored` is the Lease it holds now (its
        resourceVersion "" when unknown). `sent_at`: when the write was sent."""
        self.observed, self.observed_at = stored, sent_at
        self.renewed_at = sent_at if stored.holder == self.identity else None
        self.stale = False

    def refused(self) -> None:
        """A write was answered 409 (someone else wrote first) or failed: read again next time.

        Leadership is kept until its deadline: a failed renew does not mean someone else leads. The
        expiry clock of another holder's Lease keeps running: only a change read on the server resets it.
        """
        self.stale = True

    def release(self, wall: datetime.datetime) -> Update | None:
        """The write that gives up a Lease this candidate holds (None: it holds none).

        Only after every write made as the leader has finished: the next leader starts at once.
        """
        observed = self.observed
        if observed is None or observed.holder != self.identity or not observed.resource_version:
            return None
        self.renewed_at = None
        return Update(
            replace(
                observed,
                holder="",
                lease_duration_seconds=RELEASED_LEASE_DURATION_SECONDS,
                acquire_time=wall,
                renew_time=wall,
            )
        )

    def retry_in(self, now: float, jitter: float) -> float:
        """Seconds until the next try: retryPeriod for the holder (capped at its deadline, so that it
        stops leading on time), retryPeriod * (1 + ACQUIRE_JITTER * jitter) for a candidate.
        `jitter`: a random number in [0, 1)."""
        period = self.timing.retry_period_seconds
        until = self.leading_until()
        if until is not None and now < until:
            return max(0.0, min(period, until - now))
        return period * (1 + ACQUIRE_JITTER * jitter)
