"""The custom resources this operator serves, with their CRD presentation."""

from __future__ import annotations

from maas_operator.api import modelservice, trainingjob
from maas_operator.api.crd import CrdSpec, PrinterColumn

TRAININGJOB = CrdSpec(
    kind=trainingjob.KIND,
    plural=trainingjob.PLURAL,
    short_names=["tj"],
    spec_model=trainingjob.TrainingJobSpec,
    status_model=trainingjob.TrainingJobStatus,
    max_name_length=trainingjob.MAX_NAME_LENGTH,
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
    max_name_length=modelservice.MAX_NAME_LENGTH,
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
