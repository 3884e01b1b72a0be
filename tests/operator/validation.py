"""Every object the operator writes must pass Kubernetes' own schema, strictly."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kubernetes_validate

KUBERNETES_VERSION = kubernetes_validate.latest_version()
# What the API server adds to stored objects; the emulator stores what tests patched in.
SERVER_SIDE_FIELDS = ("status",)


def assert_valid_objects(objects: Iterable[dict[str, Any]]) -> None:
    for obj in objects:
        written = {key: value for key, value in obj.items() if key not in SERVER_SIDE_FIELDS}
        try:
            kubernetes_validate.validate(written, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            name = obj.get("metadata", {}).get("name")
            raise AssertionError(f"{obj.get('kind')} {name} is invalid: {error}") from error
