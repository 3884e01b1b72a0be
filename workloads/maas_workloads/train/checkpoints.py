"""Checkpoints in a storage location: one directory per checkpoint, committed by its marker, newest K kept.

Layout under the checkpoint URI: `checkpoint-<step, 12 digits>/...files.../checkpoint.json`. The marker
is published last (see storage.publish_directory), so a directory without it is an interrupted write:
never restored, and removed once a newer checkpoint is committed.
"""

from __future__ import annotations

import json
import pathlib
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from maas_workloads import storage

MARKER = "checkpoint.json"
_DIRECTORY = re.compile(r"^checkpoint-(\d{12})$")


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    epoch: int
    uri: str
    directory: str
    """The checkpoint's key prefix inside the store."""
    attempt: int = 1
    metrics: dict[str, float] = field(default_factory=dict)


def directory_name(step: int) -> str:
    return f"checkpoint-{step:012d}"


class CheckpointStore:
    """The checkpoints of one job (its UID): another job's checkpoints under the same URI are left alone."""

    def __init__(self, location: storage.Location, keep: int, job_uid: str = "") -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.location = location
        self.keep = keep
        self.job_uid = job_uid
        self._markers: dict[int, dict[str, Any]] = {}

    def _scan(self) -> tuple[list[int], list[int]]:
        """(this job's committed steps, uncommitted steps), each sorted."""
        files_by_step: dict[int, set[str]] = {}
        for key in self.location.list_keys():
            top, _, rest = key.partition("/")
            match = _DIRECTORY.match(top)
            if match and rest:
                files_by_step.setdefault(int(match.group(1)), set()).add(rest)
        committed = sorted(
            step
            for step, files in files_by_step.items()
            if MARKER in files and self._marker(step).get("jobUid", "") == self.job_uid
        )
        uncommitted = sorted(step for step, files in files_by_step.items() if MARKER not in files)
        return committed, uncommitted

    def committed(self) -> list[CheckpointInfo]:
        return [self._info(step) for step in self._scan()[0]]

    def latest(self) -> CheckpointInfo | None:
        committed, _ = self._scan()
        return self._info(committed[-1]) if committed else None

    def _marker(self, step: int) -> dict[str, Any]:
        # A committed marker never changes (a re-save of the same step rewrites it through save()).
        if step not in self._markers:
            self._markers[step] = json.loads(self.location.read_bytes(f"{directory_name(step)}/{MARKER}"))
        return self._markers[step]

    def _info(self, step: int) -> CheckpointInfo:
        directory = directory_name(step)
        marker = self._marker(step)
        return CheckpointInfo(
            step=step,
            epoch=int(marker.get("epoch", 0)),
            uri=self.location.child(directory).uri,
            directory=directory,
            attempt=int(marker.get("attempt", 1)),
            metrics={k: float(v) for k, v in (marker.get("metrics") or {}).items()},
        )

    def _marker_json(self, step: int, epoch: int, attempt: int, metrics: dict[str, float]) -> str:
        return json.dumps(
            {
                "step": step,
                "epoch": epoch,
                "attempt": attempt,
                "jobUid": self.job_uid,
                "metrics": metrics,
                "createdAt": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            }
        )

    def _committed(self, step: int, epoch: int, attempt: int, metrics: dict[str, float]) -> CheckpointInfo:
        self._markers.pop(step, None)
        self.prune()
        return CheckpointInfo(
            step, epoch, self.location.child(directory_name(step)).uri, directory_name(step), attempt, metrics
        )

    def save(
        self, source: pathlib.Path, *, step: int, epoch: int, attempt: int, metrics: dict[str, float]
    ) -> tuple[CheckpointInfo, float]:
        """Commit a local directory as the checkpoint of `step`; returns it and the seconds it took."""
        _refuse_marker(source)
        started = time.monotonic()
        (source / MARKER).write_text(self._marker_json(step, epoch, attempt, metrics))
        try:
            self.location.publish_directory(source, directory_name(step), MARKER)
        finally:
            (source / MARKER).unlink(missing_ok=True)
        return self._committed(step, epoch, attempt, metrics), time.monotonic() - started

    # A sharded checkpoint (torch.distributed.checkpoint) has files from every rank: rank 0 clears
    # the step's directory, every rank uploads its part, and once all have (a barrier between the
    # ranks, outside this class) rank 0 commits the marker. Until then the directory is uncommitted:
    # never restored, and pruned once a newer checkpoint is committed.

    def clear(self, step: int) -> None:
        """Remove whatever an interrupted earlier save of `step` left behind."""
        self._markers.pop(step, None)
        self.location.delete_prefix(directory_name(step))

    def upload_part(self, source: pathlib.Path, step: int) -> None:
        """Upload one rank's files of the checkpoint of `step` (uncommitted until commit())."""
        _refuse_marker(source)
        for path in sorted(source.rglob("*")):
            if path.is_file():
                self.location.upload_file(path, f"{directory_name(step)}/{path.relative_to(source).as_posix()}")

    def commit(self, *, step: int, epoch: int, attempt: int, metrics: dict[str, float]) -> CheckpointInfo:
        """Write the marker of `step`, whose parts every rank has uploaded, then prune older checkpoints."""
        marker = self._marker_json(step, epoch, attempt, metrics).encode()
        self.location.write_bytes(f"{directory_name(step)}/{MARKER}", marker)
        return self._committed(step, epoch, attempt, metrics)

    def prune(self) -> None:
        """Keep the newest `keep` committed checkpoints; drop interrupted writes older than the newest."""
        committed, uncommitted = self._scan()
        if not committed:
            return
        newest = committed[-1]
        for step in committed[: -self.keep] + [s for s in uncommitted if s < newest]:
            self.location.delete_prefix(directory_name(step))
            self._markers.pop(step, None)

    def download(self, info: CheckpointInfo, destination: pathlib.Path) -> pathlib.Path:
        """A local directory holding the checkpoint's files (the mounted one itself for file:// stores)."""
        if isinstance(self.location, storage.LocalLocation):
            return self.location.root / info.directory
        self.location.download_directory(info.directory, destination)
        (destination / MARKER).unlink(missing_ok=True)
        return destination


def _refuse_marker(source: pathlib.Path) -> None:
    if (source / MARKER).exists():
        raise ValueError(f"{source} already contains {MARKER}, a name reserved for the checkpoint marker")
