"""The leader election decisions (election.py), on made-up clocks: no I/O, no sleeping."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import pathlib

import pytest

from maas_operator import cli
from maas_operator.config import OperatorConfig
from maas_operator.election import ACQUIRE_JITTER, Create, Election, LeaseRecord, Timing, Update, Wait
from maas_operator.kube import lease

WALL = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DEFAULT = Timing()


class Server:
    """A Lease store that does what the API server does with resourceVersions."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.versions = itertools.count(1)

    def write(self, step: Create | Update) -> LeaseRecord | None:
        if isinstance(step, Create):
            if self.record is not None:
                return None
        elif self.record is None or step.record.resource_version != self.record.resource_version:
            return None
        self.record = dataclasses.replace(step.record, resource_version=str(next(self.versions)))
        return self.record


def round_(election: Election, server: Server, now: float) -> None:
    """One try of the election loop (handlers/leadership.py) at local time `now`."""
    renewal = election.renewal(now, WALL)
    if renewal is not None:
        stored = server.write(renewal)
        if stored is not None:
            election.written(stored, now)
            return
        election.refused()
    step = election.read(server.record, now, WALL)
    if isinstance(step, Wait):
        return
    stored = server.write(step)
    if stored is None:
        election.refused()
    else:
        election.written(stored, now)


def test_client_go_defaults() -> None:
    assert (DEFAULT.lease_duration_seconds, DEFAULT.renew_deadline_seconds, DEFAULT.retry_period_seconds) == (15, 10, 2)
    config = OperatorConfig()
    assert config.election_timing() == DEFAULT and config.leader_election is False


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "words"),
    [(10, 10, 2, "leaseDuration must be greater than renewDeadline"), (15, 2.4, 2, "renewDeadline must be greater")],
)
def test_timing_out_of_order_is_refused_naming_the_settings(lease: int, renew: float, retry: float, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Timing(lease, renew, retry)
    environ = {
        "MAAS_OPERATOR_LEADER_ELECTION_LEASE_DURATION_SECONDS": str(lease),
        "MAAS_OPERATOR_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": str(renew),
        "MAAS_OPERATOR_LEADER_ELECTION_RETRY_PERIOD_SECONDS": str(retry),
    }
    with pytest.raises(ValueError, match="MAAS_OPERATOR_LEADER_ELECTION_"):
        OperatorConfig.from_env(environ)


def test_the_first_candidate_creates_the_lease_and_the_next_waits_for_it_to_expire() -> None:
    server = Server()
    a, b = Election("a", DEFAULT), Election("b", DEFAULT)
    round_(a, server, now=100.0)
    assert a.is_leader(100.0) and server.record is not None and server.record.holder == "a"
    assert server.record.transitions == 0 and server.record.lease_duration_seconds == 15

    step = b.read(server.record, 200.0, WALL)  # b's clock is its own: it starts counting when it first sees the record
    assert step == Wait("a", 15.0)
    assert b.read(server.record, 214.9, WALL) == Wait("a", pytest.approx(0.1))
    taken = b.read(server.record, 215.0, WALL)
    assert isinstance(taken, Update)
    assert taken.record.holder == "b" and taken.record.transitions == 1
    assert taken.record.resource_version == server.record.resource_version, "the write is conditional on the read"


def test_renewals_keep_followers_waiting() -> None:
    server = Server()
    a, b = Election("a", DEFAULT), Election("b", DEFAULT)
    round_(a, server, 0.0)
    for now in range(2, 60, 2):  # a renews every retryPeriod; b tries as often
        round_(a, server, float(now))
        round_(b, server, float(now) + 0.5)
        assert a.is_leader(now + 0.5) and not b.is_leader(now + 0.5)
    assert server.record is not None and server.record.holder == "a" and server.record.transitions == 0


def test_a_leader_stops_before_any_follower_may_take_over() -> None:
    for timing in (DEFAULT, Timing(2, 1.0, 0.2), Timing(60, 30, 5)):
        server = Server()
        a, b = Election("a", timing), Election("b", timing)
        round_(a, server, 0.0)
        round_(b, server, 0.0)  # b sees a's last renew the moment it is written
        last_renew = 0.0
        # a's renews fail from now on: it leads until renewDeadline after its last successful one ...
        assert a.is_leader(last_renew + timing.renew_deadline_seconds - 0.001)
        assert not a.is_leader(last_renew + timing.renew_deadline_seconds)
        # ... and b may take over only leaseDuration after it saw that renew.
        assert isinstance(b.read(server.record, timing.lease_duration_seconds - 0.001, WALL), Wait)
        assert isinstance(b.read(server.record, float(timing.lease_duration_seconds), WALL), Update)
        assert timing.renew_deadline_seconds < timing.lease_duration_seconds


def test_a_failed_renew_keeps_leadership_until_the_deadline_and_reads_again() -> None:
    server = Server()
    a = Election("a", DEFAULT)
    round_(a, server, 0.0)
    assert a.renewal(2.0, WALL) is not None
    a.refused()  # e.g. 503, or a timeout
    assert a.is_leader(9.9)
    assert a.renewal(4.0, WALL) is None, "after a failure the holder reads before it writes"
    round_(a, server, 4.0)
    assert a.is_leader(13.9) and not a.is_leader(14.0)


def test_a_leader_that_reads_another_holder_or_no_lease_stops_at_once() -> None:
    server = Server()
    a = Election("a", DEFAULT)
    round_(a, server, 0.0)
    assert server.record is not None
    server.record = dataclasses.replace(server.record, holder="intruder", resource_version="99")
    assert isinstance(a.read(server.record, 1.0, WALL), Wait)
    assert not a.is_leader(1.0)

    b = Election("b", DEFAULT)
    round_(b, Server(), 0.0)
    assert b.is_leader(0.5)
    assert isinstance(b.read(None, 1.0, WALL), Create), "deleted: compete again by creating it"
    assert not b.is_leader(1.0)


def test_a_failed_take_over_does_not_restart_the_wait() -> None:
    server = Server()
    a, b = Election("a", DEFAULT), Election("b", DEFAULT)
    round_(a, server, 0.0)
    round_(b, server, 0.0)  # a is killed after this renew
    step = b.read(server.record, 15.0, WALL)
    assert isinstance(step, Update)
    b.refused()  # e.g. the API server answered 503
    assert isinstance(b.read(server.record, 17.0, WALL), Update), "the Lease is still expired: try again at once"


def test_of_two_candidates_that_see_the_lease_free_one_wins() -> None:
    server = Server()
    server.record = LeaseRecord("", 1, transitions=4, resource_version="7")  # released
    a, b = Election("a", DEFAULT), Election("b", DEFAULT)
    step_a, step_b = a.read(server.record, 0.0, WALL), b.read(server.record, 0.0, WALL)
    assert isinstance(step_a, Update) and isinstance(step_b, Update)
    stored = server.write(step_a)
    assert stored is not None
    a.written(stored, 0.0)
    assert server.write(step_b) is None, "b's write carries the version both read: 409"
    b.refused()
    assert a.is_leader(0.1) and not b.is_leader(0.1)
    assert server.record.holder == "a" and server.record.transitions == 5
    assert b.read(server.record, 0.2, WALL) == Wait("a", 15.0)


def test_release_hands_over_without_waiting_for_expiry() -> None:
    server = Server()
    a, b = Election("a", DEFAULT), Election("b", DEFAULT)
    round_(a, server, 0.0)
    round_(b, server, 1.0)
    assert b.release(WALL) is None, "only the holder releases"
    release = a.release(WALL)
    assert release is not None and not a.is_leader(0.1), "a stops leading before it releases"
    stored = server.write(release)
    assert stored is not None and stored.holder == "" and stored.lease_duration_seconds == 1
    a.written(stored, 0.2)
    round_(b, server, 1.5)  # long before a's lease would have expired
    assert b.is_leader(1.6) and server.record is not None and server.record.transitions == 1


def test_a_restarted_holder_renews_its_own_lease_at_once() -> None:
    server = Server()
    round_(Election("pod-0", DEFAULT), server, 0.0)
    restarted = Election("pod-0", DEFAULT)  # same pod name, new process: nothing observed yet
    round_(restarted, server, 1.0)
    assert restarted.is_leader(1.0)
    assert server.record is not None and server.record.transitions == 0


def test_retry_period_and_jitter() -> None:
    a = Election("a", DEFAULT)
    assert a.retry_in(0.0, 0.0) == 2.0
    assert a.retry_in(0.0, 0.999) == pytest.approx(2.0 * (1 + ACQUIRE_JITTER * 0.999))
    server = Server()
    round_(a, server, 0.0)
    assert a.retry_in(1.0, 0.9) == 2.0, "the leader renews every retryPeriod, without jitter"
    assert a.retry_in(9.0, 0.9) == pytest.approx(1.0), "and wakes up at its deadline"


def test_an_identity_is_required() -> None:
    with pytest.raises(ValueError, match="identity"):
        Election("", DEFAULT)


def test_the_operator_refuses_to_start_without_the_leases_namespace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAAS_OPERATOR_LEADER_ELECTION", "true")
    monkeypatch.delenv("MAAS_OPERATOR_LEADER_ELECTION_NAMESPACE", raising=False)
    monkeypatch.setattr(lease, "SERVICE_ACCOUNT_NAMESPACE", pathlib.Path("/nonexistent/namespace"))
    assert cli.main(["operator"]) == 2
    assert "MAAS_OPERATOR_LEADER_ELECTION_NAMESPACE" in capsys.readouterr().err
