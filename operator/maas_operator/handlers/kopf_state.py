"""kopf keeps no state of ours: no diff base, no handler progress.

The operator registers only watch-event handlers and indices (our own queue does the rest), so
nothing ever reads what kopf's default storages would compute. kopf still builds a diff base
(a deep copy of the body, cleaned of kopf's annotations) and clears handler progress from it
on every watch event; these storages make both a no-op, which was about a quarter of kopf's
time per event in a burst (benchmarks/operator_scale.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


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


def keep_nothing(settings: kopf.OperatorSettings) -> None:
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.progress_storage = NoProgress()
