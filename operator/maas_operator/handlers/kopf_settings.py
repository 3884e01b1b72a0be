"""kopf settings that keep its work per watch event small, and its memory to our objects.

- No state: the operator registers only watch-event handlers and indices (our own queue does
  the rest), so nothing ever reads what kopf's default storages compute. kopf still builds a
  diff base (a deep copy of the body, cleaned of kopf's annotations) and clears handler progress
  from it on every watch event; these storages make both a no-op, which was about a quarter of
  kopf's time per event in a burst (benchmarks/operator_scale.py).
- Only our children: the child kinds (pods, Services, ...) are watched with the label selector
  every child carries, so the API server sends no other pod or Service of the cluster. kopf's
  handler filters (`labels=`) are checked after an event is received and processed; without the
  selector the operator would receive, and keep a memory of, every pod in the cluster. The kinds
  only ModelServices have (all but pods) also select on the ModelService label: a TrainingJob's
  head Service, which no handler reads, is not sent either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf

from maas_operator.builders.meta import LABEL_MANAGED_BY, LABEL_MODELSERVICE, MANAGED_BY
from maas_operator.handlers.modelservice import CHILD_RESOURCES

IDLE_WORKER_SECONDS = 1.0
"""kopf keeps a task and a queue per object for this long after its last event (default 5 s)."""


class NoDiffBase(kopf.DiffBaseStorage):
    """No change handlers, so no last-handled state: nothing built, stored or fetched."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class NoProgress(kopf.ProgressStorage):
    """No change handlers, so no handler progress to keep."""

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        return None

    def store(self, *, key: kopf.HandlerId, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


def configure(settings: kopf.OperatorSettings) -> None:
    """Apply the settings this module's docstring lists to kopf's `settings` (in a startup handler)."""
    settings.queueing.idle_timeout = IDLE_WORKER_SECONDS
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.progress_storage = NoProgress()
    for group, version, plural in CHILD_RESOURCES.values():
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        if plural != "pods":  # TrainingJobs' children are pods too
            selector += f",{LABEL_MODELSERVICE}"
        settings.watching.label_selectors[group, version, plural] = selector
