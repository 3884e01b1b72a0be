"""Server-Side Apply's field ownership, modelled for the test emulator (tests/operator/emulator.py).

What the Kubernetes API server does (https://kubernetes.io/docs/reference/using-api/server-side-apply/),
and what this model keeps of it:

- Every write records which fields its field manager set: an apply (`application/apply-patch+yaml`)
  as the manager's "Apply" entry, any other write (create, merge patch, update) as its "Update" entry.
- An apply makes the manager own exactly the fields in the applied configuration; two appliers
  that set a field to the same value share it. A field the manager applied before and leaves out
  now is removed from the object unless another manager (Apply or Update) also owns it; a removed
  field with a default gets its default back (modelled: Deployment spec.replicas -> 1).
- An apply that sets a field another manager owns with a different value conflicts (409), unless
  forced, which takes the field over.
- An update takes ownership of the fields whose value it changed (and of every field it sets on
  create); other managers lose those fields.
- An apply to an object that does not exist creates it.

Not modelled: lists are atomic (owned and replaced as a whole; the API server merges lists
marked `x-kubernetes-list-type: map` item by item, e.g. containers and env by name), managedFields
are kept beside the object instead of in metadata.managedFields, per-version field sets, and
defaulting other than Deployment spec.replicas.
"""

from __future__ import annotations

import copy
from typing import Any

Path = tuple[str, ...]
Manager = tuple[str, str]
"""(field manager, "Apply" or "Update")."""
Ownership = dict[Manager, set[Path]]

IDENTITY = frozenset({("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")})
SERVER_FIELDS = frozenset(
    {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "deletionTimestamp", "selfLink"}
)
DEFAULTS: dict[tuple[str, Path], Any] = {("Deployment", ("spec", "replicas")): 1}
"""Fields the API server defaults when no manager sets them (the subset the operator's tests need)."""


class ApplyConflict(Exception):
    """An unforced apply would change fields other managers own."""

    def __init__(self, conflicts: list[tuple[Path, Manager]]) -> None:
        described = ", ".join(f'conflict with "{manager[0]}": .{".".join(path)}' for path, manager in conflicts)
        super().__init__(f"Apply failed with {len(conflicts)} conflict(s): {described}")


def leaves(obj: dict[str, Any], prefix: Path = ()) -> set[Path]:
    """The paths of every field a manager can own: map keys recursively, lists and scalars whole."""
    found: set[Path] = set()
    for key, value in obj.items():
        path = (*prefix, key)
        if not prefix and key == "status":
            continue
        if prefix == ("metadata",) and key in SERVER_FIELDS:
            continue
        if path in IDENTITY:
            continue
        if isinstance(value, dict) and value:
            found |= leaves(value, path)
        else:
            found.add(path)
    return found


def get(obj: dict[str, Any], path: Path) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def put(obj: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        child = obj.get(key)
        if not isinstance(child, dict):
            child = obj[key] = {}
        obj = child
    obj[path[-1]] = copy.deepcopy(value)


def remove(obj: dict[str, Any], path: Path) -> None:
    """Remove a field, and the maps it leaves empty."""
    parents = [obj]
    for key in path[:-1]:
        child = parents[-1].get(key)
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):
        if parents[depth]:
            break
        parents[depth - 1].pop(path[depth - 1], None)


def owners(ownership: Ownership, path: Path) -> list[Manager]:
    return [manager for manager, paths in ownership.items() if path in paths]


def record_update(ownership: Ownership, manager: str, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
    """A create (before None) or non-apply write by `manager`: it takes the fields it changed."""
    changed = leaves(after) if before is None else _changed(before, after)
    for owned in ownership.values():
        owned.difference_update(changed)  # fields it changed (or removed) are no longer anyone else's
    ownership.setdefault((manager, "Update"), set()).update(changed & leaves(after))
    _drop_empty(ownership)


def apply(
    live: dict[str, Any] | None, ownership: Ownership, manager: str, config: dict[str, Any], force: bool
) -> dict[str, Any]:
    """The object after `manager` applies `config` (creating it when `live` is None); updates `ownership`.

    Raises ApplyConflict when not forced and another manager owns a field with another value.
    """
    mine: Manager = (manager, "Apply")
    wanted = leaves(config)
    if live is None:
        ownership.clear()
        ownership[mine] = wanted
        return copy.deepcopy(config)
    conflicts = [
        (path, other)
        for other, paths in ownership.items()
        if other != mine
        for path in sorted(wanted & paths)
        if get(live, path) != get(config, path)
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    for path, other in conflicts:
        ownership[other].discard(path)
    result = copy.deepcopy(live)
    kind = str(live.get("kind", ""))
    for path in sorted(ownership.get(mine, set()) - wanted):
        if any(other != mine for other in owners(ownership, path)):
            continue
        if (kind, path) in DEFAULTS:
            put(result, path, DEFAULTS[kind, path])
        else:
            remove(result, path)
    for path in wanted:
        put(result, path, get(config, path))
    ownership[mine] = wanted
    _drop_empty(ownership)
    return result


def _changed(before: dict[str, Any], after: dict[str, Any]) -> set[Path]:
    old, new = leaves(before), leaves(after)
    return {path for path in old | new if get(before, path) != get(after, path)}


def _drop_empty(ownership: Ownership) -> None:
    for manager in [m for m, paths in ownership.items() if not paths]:
        del ownership[manager]


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) applied to `base`: maps merge, null removes, the rest replaces.
    `base` is left as it was; the result shares its unchanged values."""
    result = dict(base)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result
