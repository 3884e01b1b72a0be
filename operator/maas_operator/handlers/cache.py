"""What the operator keeps of each watched object: the fields its planners read, nothing else.

The kopf indices hold one value per watched object for the operator's lifetime, so their size
is the operator's memory. A body as the API server sends it carries managedFields (one entry
per field manager, often larger than the spec), kubectl's last-applied annotation (a copy of
the spec), and, for a Deployment or a pod, the whole pod template or pod spec, which no planner
reads. These functions keep the rest, with one copy of each key and short string shared by
every object (`sys.intern`): the JSON decoder makes new strings for every body, so without it a
thousand Deployments hold a thousand copies of "metadata", "app.kubernetes.io/managed-by",
"True", ... — half of what is kept (tests/operator/test_memory.py measures it).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
)
"""Besides the annotations (all but LAST_APPLIED: e.g. maas.dev/spec-hash, the model's URI)."""
KEPT_POD_SPEC = ("nodeName", "terminationGracePeriodSeconds")
"""What pod views read of a pod's spec (status/pods.py)."""


SHARED_STRING_LENGTH = 64
"""Strings up to this long (names, labels, reasons, timestamps) are interned; messages are not."""


def _shared(value: Any) -> Any:
    """`value` rebuilt with interned keys and short strings (dicts and lists copied, the rest kept)."""
    if isinstance(value, dict):
        return {sys.intern(key): _shared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shared(item) for item in value]
    if isinstance(value, str) and len(value) <= SHARED_STRING_LENGTH:
        return sys.intern(value)
    return value


def _metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata") or {}
    kept = {key: metadata[key] for key in KEPT_METADATA if key in metadata}
    annotations = metadata.get("annotations")
    if annotations:
        kept["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return kept


def custom_resource(body: Mapping[str, Any]) -> dict[str, Any]:
    """A TrainingJob or ModelService: identity, spec and status."""
    kept = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": _metadata(body)}
    for stanza in ("spec", "status"):
        if stanza in body:
            kept[stanza] = body[stanza]
    return dict(_shared(kept))


def child(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A child of a ModelService, as the planner reads it (status/modelservice*.py, status/rollout.py):

    - every kind: metadata (its name, spec-hash annotation, deletionTimestamp);
    - Deployment: spec.replicas, the pod template's annotations (the model it serves), status;
    - Pod: the labels and annotations in metadata, spec.nodeName and the grace period, status.

    Raises nothing: a missing field stays missing, as it would in the full body.
    """
    kept: dict[str, Any] = {"kind": kind, "metadata": _metadata(body)}
    spec = body.get("spec") or {}
    if kind == "Deployment":
        annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations")
        kept["spec"] = {"template": {"metadata": {"annotations": annotations}}}
        if "replicas" in spec:
            kept["spec"]["replicas"] = spec["replicas"]
    elif kind == "Pod":
        kept["spec"] = {key: spec[key] for key in KEPT_POD_SPEC if key in spec}
    else:
        kept["spec"] = {}
    if kind in ("Deployment", "Pod") and "status" in body:
        kept["status"] = body["status"]
    return dict(_shared(kept))
