"""What the operator remembers between reconciles corrects the watched pods for its own writes
the watch has not shown yet (handlers/state.py)."""

from __future__ import annotations

from maas_operator.handlers.state import ObjectState
from maas_operator.status.pods import PodView


def pod(name: str, attempt: int, deleting: bool = False) -> PodView:
    return PodView(name=name, role="worker", attempt=attempt, index=0, phase="Running", deleting=deleting)


def test_a_pod_deleted_gracefully_reads_as_deleting_until_the_watch_shows_it() -> None:
    state = ObjectState()
    state.expect_deleted("w-0")
    assert state.observe([pod("w-0", 1)]) == [pod("w-0", 1, deleting=True)]
    assert state.observe([]) == [] and not state.deleted


def test_a_force_deleted_pod_stays_visible_but_is_not_force_deleted_again() -> None:
    state = ObjectState()
    state.expect_deleted("w-0", removed=True)  # grace period 0
    # A finalizer keeps it (and its name) until its owner lets go: the next attempt must wait for it.
    assert state.observe([pod("w-0", 1, deleting=True)]) == [pod("w-0", 1, deleting=True)]
    assert state.force_deleted("w-0"), "no second force delete while the watch shows it terminating"
    assert state.observe([]) == [] and not state.removed, "forgotten once the watch no longer shows it"
    assert not state.force_deleted("w-0")
    new = pod("w-0", 2)
    state.expect_created(new)
    assert state.observe([]) == [new], "the next attempt's pod, created before the watch shows it"
