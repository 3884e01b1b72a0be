"""Which artifact a ModelService's model source names: a URI, or the model a TrainingJob published."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from maas_operator.api.common import LocalObjectReference
from maas_operator.api.modelservice import ModelSource, ServedModel, TrainingJobSource
from maas_operator.builders.trainingjob import MOUNT_ROOT as TRAINING_MOUNT_ROOT


@dataclass(frozen=True)
class Resolution:
    model: ServedModel | None
    reason: str
    message: str


def same_artifact(a: ServedModel | None, b: ServedModel | None) -> bool:
    return a is not None and b is not None and a.uri == b.uri and a.sha256 == b.sha256


def describe(model: ServedModel | None) -> str:
    if model is None:
        return "no model"
    short = f" (sha256 {model.sha256[:12]})" if model.sha256 else ""
    return f"{model.uri}{short}"


def _training_output_uri(job: Mapping[str, Any], uri: str) -> str:
    """A TrainingJob's file:// URI on its output claim, as a pvc:// URI the server pods can mount."""
    claim = (((job.get("spec") or {}).get("output") or {}).get("pvc") or {}).get("claimName")
    prefix = f"file://{TRAINING_MOUNT_ROOT}/{claim}/"
    if claim and uri.startswith(prefix):
        return f"pvc://{claim}/{uri.removeprefix(prefix)}"
    return uri


def _training_output_secret(job: Mapping[str, Any]) -> LocalObjectReference | None:
    name = (((job.get("spec") or {}).get("output") or {}).get("secretRef") or {}).get("name")
    return LocalObjectReference(name=name) if name else None


def _unpublished_variant(job: str, variant: str | None, reported: object) -> str | None:
    """Why the TrainingJob's artifact lacks `variant` (its status.model.variants), or None when it has it."""
    if variant is None:
        return None
    entries = [entry for entry in reported if isinstance(entry, dict)] if isinstance(reported, list) else []
    entry = next((e for e in entries if e.get("name") == variant), None)
    if entry is not None and entry.get("published"):
        return None
    available = ", ".join(["full (no variant)", *(str(e.get("name")) for e in entries if e.get("published"))])
    reason = (
        f"it was not published: {entry.get('message')}"
        if entry is not None
        else "it is not in the job's output.variants"
    )
    return f"model.variant {variant}: TrainingJob {job} has no {variant} variant ({reason}); it has: {available}"


def resolve(
    source: ModelSource, training_jobs: Mapping[str, dict[str, Any] | None], serving: ServedModel | None = None
) -> Resolution:
    """What `source` names now. `serving`: the model deployed from this source so far, which keeps
    serving when its TrainingJob is deleted after it succeeded (e.g. by ttlSecondsAfterFinished)."""
    if source.uri is not None:
        return Resolution(
            ServedModel(uri=source.uri, sha256=source.sha256, secret_ref=source.secret_ref, variant=source.variant),
            "UriSet",
            f"serving {source.uri}",
        )
    assert source.training_job_ref is not None
    name = source.training_job_ref.name
    job = training_jobs.get(name)
    if job is None and serving is not None and serving.training_job is not None and serving.training_job.name == name:
        return Resolution(
            serving,
            "TrainingJobDeleted",
            f"TrainingJob {name} was deleted after it produced {describe(serving)}, which keeps serving; "
            "re-create the TrainingJob to train and serve a new model",
        )
    if job is None:
        return Resolution(
            None,
            "TrainingJobNotFound",
            f"TrainingJob {name} does not exist in this namespace: create it, or fix model.trainingJobRef.name",
        )
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        failed: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {})
        detail = f" ({failed.get('reason')}: {failed.get('message')})" if failed else ""
        return Resolution(
            None,
            "TrainingJobFailed",
            f"TrainingJob {name} failed{detail}; fix it and re-create it to serve its model",
        )
    produced = status.get("model") or {}
    if phase != "Succeeded" or not produced.get("uri"):
        progress = ((status.get("progress") or {}).get("summary")) or ""
        return Resolution(
            None,
            "TrainingJobNotSucceeded",
            f"TrainingJob {name} is {phase}{f' ({progress})' if progress else ''}; "
            "its model is served once it has succeeded",
        )
    sha256 = produced.get("sha256")
    if source.sha256 and sha256 != source.sha256:
        return Resolution(
            None,
            "ChecksumMismatch",
            f"TrainingJob {name} produced a model with sha256 {sha256}, but model.sha256 pins {source.sha256}",
        )
    missing = _unpublished_variant(name, source.variant, produced.get("variants"))
    if missing:
        return Resolution(None, "VariantNotPublished", missing)
    metadata = job.get("metadata") or {}
    model = ServedModel(
        uri=_training_output_uri(job, produced["uri"]),
        sha256=sha256,
        training_job=TrainingJobSource(name=name, uid=metadata.get("uid")),
        secret_ref=source.secret_ref or _training_output_secret(job),
        variant=source.variant,
    )
    return Resolution(model, "TrainingJobSucceeded", f"serving the model of TrainingJob {name}")
