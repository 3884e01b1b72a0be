"""The custom resources this operator serves, with their CRD presentation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from maas_operator.api import modelservice, trainingjob
from maas_operator.api.common import describe_validation_error
from maas_operator.api.crd import CrdSpec, PrinterColumn
from maas_operator.api.names import name_error

TRAININGJOB = CrdSpec(
    kind=trainingjob.KIND,
    plural=trainingjob.PLURAL,
    short_names=["tj"],
    spec_model=trainingjob.TrainingJobSpec,
    status_model=trainingjob.TrainingJobStatus,
    name_rules=trainingjob.NAME_RULES,
    printer_columns=[
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Ready", ".status.workers.ready", "integer", "Worker pods ready"),
        PrinterColumn("Desired", ".status.workers.desired", "integer", "Worker pods desired"),
        PrinterColumn("Progress", ".status.progress.summary"),
        PrinterColumn("Attempt", ".status.attempt", "integer"),
        PrinterColumn("Model", ".status.model.uri", priority=1),
    ],
)

MODELSERVICE = CrdSpec(
    kind=modelservice.KIND,
    plural=modelservice.PLURAL,
    short_names=["ms"],
    spec_model=modelservice.ModelServiceSpec,
    status_model=modelservice.ModelServiceStatus,
    name_rules=modelservice.NAME_RULES,
    printer_columns=[
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Ready", ".status.replicas.ready", "integer", "Pods ready"),
        PrinterColumn("Desired", ".status.replicas.desired", "integer", "Pods desired"),
        PrinterColumn("Model", ".status.model.uri"),
        PrinterColumn("URL", ".status.url"),
        PrinterColumn("Canary", ".status.canary.phase", priority=1),
    ],
)

ALL = [TRAININGJOB, MODELSERVICE]

BY_KIND = {crd.kind: crd for crd in ALL}


class InvalidResourceError(ValueError):
    """A TrainingJob or ModelService document that the API server or the operator would refuse."""


def parse_spec(document: Mapping[str, Any]) -> BaseModel:
    """The validated spec of a TrainingJob or ModelService document, checked as the CRD checks it.

    Raises InvalidResourceError with the field and the CRD's message, e.g. `metadata.name must be a
    DNS-1035 label: ...` or `spec.workers.resources.cpu: must be a positive Kubernetes quantity, ...`.
    """
    crd = BY_KIND.get(str(document.get("kind")))
    if crd is None:
        raise InvalidResourceError(f"kind must be one of {', '.join(BY_KIND)}, not {document.get('kind')!r}")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise InvalidResourceError("metadata.name: Required value")
    error = name_error(crd.name_rules, name)
    if error is not None:
        raise InvalidResourceError(error)
    spec = document.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidResourceError("spec: Required value: a mapping of the fields above")
    try:
        return crd.spec_model.model_validate(spec)
    except ValidationError as invalid:
        raise InvalidResourceError(describe_validation_error(invalid)) from None
