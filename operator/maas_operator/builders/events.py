"""Kubernetes Events about our custom resources (what `kubectl describe` shows)."""

from __future__ import annotations

from typing import Any

from maas_operator.builders.meta import MANAGED_BY, Owner

MAX_MESSAGE_LENGTH = 1024
REPORTING_COMPONENT = f"maas.dev/{MANAGED_BY}"


def event(
    owner: Owner, event_type: str, reason: str, message: str, timestamp: str, suffix: str, instance: str
) -> dict[str, Any]:
    """A core/v1 Event; `suffix` makes its name unique, `instance` names the reporting operator pod."""
    if len(message) > MAX_MESSAGE_LENGTH:
        message = message[: MAX_MESSAGE_LENGTH - 3] + "..."
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{owner.name}.{suffix}", "namespace": owner.namespace},
        "involvedObject": {
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "name": owner.name,
            "namespace": owner.namespace,
            "uid": owner.uid,
        },
        "type": event_type,
        "reason": reason,
        "message": message,
        "count": 1,
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "source": {"component": MANAGED_BY},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": instance,
    }
