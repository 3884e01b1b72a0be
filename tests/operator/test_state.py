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


def test_a_force_deleted_pod_is_gone_at_once_but_not_a_new_pod_of_its_name() -> None:
    state = ObjectState()
    state.expect_deleted("w-0", removed=True)  # grace period 0: the API server removes it at once
    assert state.observe([pod("w-0", 1, deleting=True)]) == [], "no second force delete of what is gone"
    new = pod("w-0", 2)
    state.expect_created(new)
    assert state.observe([pod("w-0", 1, deleting=True)]) == [new], "the next attempt's pod, created meanwhile"
    assert state.observe([new]) == [new]
    assert not state.removed, "forgotten once the watch no longer shows the removed pod"
    assert state.observe([pod("w-0", 2, deleting=True)]) == [pod("w-0", 2, deleting=True)], "the new one is not hidden"
