"""The API server's behaviours the test emulator adds to KMock's, one switch per behaviour
(`Switches`): server-side apply with field managers (ssa.py), admission refusals and quotas
(admission.py), server errors, pods on lost nodes that never finish terminating, resourceVersion
preconditions on Leases, a latency per request. Tests reach the switches as `cluster.switches`
(emulator.py). Always on: label selectors on lists and watches.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kmock
import orjson

from tests.operator import admission, ssa

GROUP_VERSION = "maas.dev/v1alpha1"
RESOURCES: dict[str, dict[str, Any]] = {
    "apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinition", "namespaced": False},
    "v1/namespaces": {"kind": "Namespace", "namespaced": False},
    "v1/nodes": {"kind": "Node", "namespaced": False},
    "v1/pods": {"kind": "Pod", "namespaced": True, "subresources": {"status"}},
    "v1/services": {"kind": "Service", "namespaced": True},
    "v1/events": {"kind": "Event", "namespaced": True},
    "v1/secrets": {"kind": "Secret", "namespaced": True},
    "apps/v1/deployments": {"kind": "Deployment", "namespaced": True, "subresources": {"status", "scale"}},
    "autoscaling/v2/horizontalpodautoscalers": {"kind": "HorizontalPodAutoscaler", "namespaced": True},
    "policy/v1/poddisruptionbudgets": {"kind": "PodDisruptionBudget", "namespaced": True},
    "networking.k8s.io/v1/networkpolicies": {"kind": "NetworkPolicy", "namespaced": True},
    "coordination.k8s.io/v1/leases": {"kind": "Lease", "namespaced": True},
    f"{GROUP_VERSION}/trainingjobs": {"kind": "TrainingJob", "namespaced": True, "subresources": {"status"}},
    f"{GROUP_VERSION}/modelservices": {"kind": "ModelService", "namespaced": True, "subresources": {"status"}},
}
KINDS = {key.rsplit("/", 1)[1]: info["kind"] for key, info in RESOURCES.items()}
"""Kind by plural."""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


WEBHOOK = "policy.example.com"


@dataclass
class Switches:
    """How the emulated API server answers beyond storing objects: one switch per behaviour."""

    server_side_apply: bool = True
    """Apply PATCHes create missing objects and remove fields their manager stops applying (ssa.py)."""
    validation: bool = True
    """422 Invalid for the field errors admission.py models."""
    quota: dict[str, int] = field(default_factory=dict)
    """A ResourceQuota's hard limits on pods (e.g. {"requests.nvidia.com/gpu": 2}): 403 beyond them."""
    denials: dict[tuple[str, str], str] = field(default_factory=dict)
    """(kind, name) -> the reason an admission webhook gives for denying every write of that object (403)."""
    server_errors: dict[tuple[str, str], str] = field(default_factory=dict)
    """(kind, name) -> the cause of a 500 InternalError answered to every write of that object, as the
    API server answers e.g. a Service create once its IP range is full (`failed to allocate a serviceIP:
    range is full`)."""
    held: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    """(kind, name) -> a gate every write (POST, PATCH, PUT, DELETE) of that object waits at until the
    test sets it; name "*" holds every object of the kind. `holding` counts the writes waiting."""
    holding: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    lost_nodes: set[str] = field(default_factory=set)
    """Nodes whose kubelet is gone: their pods' graceful deletion never completes."""
    latency_seconds: float = 0.0
    """Added to every request before it is handled, as a real API server's round trip (~10 ms for a
    write, storage included) rather than this machine's CPU sets the pace."""
    resource_versions: bool = True
    """Leases get a new metadata.resourceVersion on every write, and a PUT (replace) that carries an
    older one is 409 Conflict: optimistic concurrency, which leader election relies on. KMock itself
    ignores resourceVersion; other kinds still do here (the operator sends no precondition on them)."""


def _error(status: int, reason: str, message: str, kind: str = "", name: str = "") -> Exception:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={"kind": kind, "name": name})


def selects(selector: str, obj: dict[str, Any]) -> bool:
    """Whether `obj`'s labels satisfy a label selector as lists and watches take it (`labelSelector`):
    comma-separated `key=value`, `key==value`, `key!=value`, `key` (exists) and `!key` (absent).
    Set-based terms (`key in (a,b)`) are not modelled: ValueError."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if " in " in term or " notin " in term or "(" in term:
            raise ValueError(f"set-based label selectors are not modelled: {term!r}")
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _copy(value: Any) -> Any:
    """A deep copy of a JSON value (what every stored object and request body is): a few times
    cheaper than copy.deepcopy."""
    return orjson.loads(orjson.dumps(value))


class _BuiltInReactions(kmock.RawHandler):  # type: ignore[misc]
    """KMock finds the reaction to a request by applying every reaction's filters in turn until
    one matches, which was most of the emulator's CPU time in a burst. While a test has added no
    reaction of its own, a Kubernetes request other than a watch can only reach the emulator's
    built-in reaction for its action: `_built_in` names it, and it is called directly."""

    __slots__ = ()

    def _built_in(self, request: Any) -> Callable[[Any], Awaitable[Any]] | None:
        return None

    async def _handle(self, request: Any) -> Any:
        serve = self._built_in(request)
        if serve is None:
            return await super()._handle(request)
        return aiohttp.web.Response(body=orjson.dumps(await serve(request)), content_type="application/json")


def _created(response: Any) -> Any:
    """The API server answers a create with 201 Created (kmock with 200)."""
    if response.status == 200 and not response.prepared:
        response.set_status(201)
    return response


class ApiServer(kmock.KubernetesEmulator, _BuiltInReactions):  # type: ignore[misc]
    """KMock's emulator with the API server's behaviours that `switches` turns on."""

    switches: Switches
    ownership: dict[tuple[str, str | None, str], ssa.Ownership]
    """Field managers' fields per object: (plural, namespace, name) -> ownership."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.switches = Switches()
        self.ownership = {}
        self._admission = asyncio.Lock()
        self._versions = itertools.count(1000)
        # PUT has no KMock action: served here unless a test's reaction answers first.
        self.fallback[kmock.method.PUT] << self._serve_replace
        self._reactions = len(self._payloads)
        """The built-in reactions' count: more once a test adds its own."""
        self._served: dict[Any, Callable[[Any], Awaitable[Any]]] = {
            kmock.action.LIST: self._serve_list,
            kmock.action.FETCH: self._serve_fetch,
            kmock.action.CREATE: self._serve_create,
            kmock.action.UPDATE: self._serve_update,
            kmock.action.DELETE: self._serve_delete,
        }

    def _built_in(self, request: Any) -> Callable[[Any], Awaitable[Any]] | None:
        if len(self._payloads) != self._reactions or request.resource is None or not request.resource.plural:
            return None  # a test's own reaction may answer; discovery
        if request.action is None:
            return self._serve_replace if str(request.method).upper().endswith("PUT") and request.name else None
        return self._served.get(request.action)

    async def _handle(self, request: Any) -> Any:
        if self.switches.latency_seconds > 0:
            await asyncio.sleep(self.switches.latency_seconds)
        if self.switches.held:
            await self._hold(request)
        resource = request.resource
        kind = KINDS.get(resource.plural) if resource is not None else None
        if kind is None or request.action is None:
            return await super()._handle(request)
        action = str(request.action.value)
        key = (str(resource.plural), request.namespace, request.name)
        if action == "UPDATE" and request.subresource is None:
            if "apply-patch" in request.headers.get("Content-Type", "") and self.switches.server_side_apply:
                return await self._apply(request, kind, key)
            return await self._update(request, kind, key)
        if action == "CREATE":
            return await self._create(request, kind)
        if action == "DELETE" and kind == "Pod" and request.name:
            lingering = await self._linger(request, key)
            if lingering is not None:
                return lingering
        if action == "DELETE" and request.name:
            self.ownership.pop(key, None)
        return await super()._handle(request)

    async def _hold(self, request: Any) -> None:
        """Wait at the gate `switches.held` has for the object a write names, if any."""
        resource = request.resource
        kind = KINDS.get(resource.plural) if resource is not None else None
        if kind is None or str(request.method).upper().rsplit(".", 1)[-1] == "GET":
            return
        name = request.name
        if not name and isinstance(request.data, dict):
            name = (request.data.get("metadata") or {}).get("name")
        key = next((k for k in ((kind, str(name or "")), (kind, "*")) if k in self.switches.held), None)
        if key is None:
            return
        self.switches.holding[key] += 1
        try:
            await self.switches.held[key].wait()
        finally:
            self.switches.holding[key] -= 1

    # --- lists and watches: only the objects the label selector selects --------------------
    async def _serve_list(self, request: Any) -> Any:
        listed = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            listed["items"] = [item for item in listed["items"] if selects(selector, item)]
        return listed

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        selector = request.params.get("labelSelector")
        async for event in super()._serve_watch(request):
            if not selector or not isinstance(event, dict) or selects(selector, event.get("object") or {}):
                yield event

    # --- the object store -------------------------------------------------------------
    # KMock finds the object a fetch, create, update or delete answers with by scanning every
    # stored object (quadratic over a burst); these answer from the store's key instead.
    def _stored(self, request: Any, namespace: str | None, name: str | None) -> Any:
        try:
            return self._objects[request.resource, namespace, name]
        except KeyError:
            return None

    async def _serve_fetch(self, request: Any) -> Any:
        obj = self._stored(request, request.namespace, request.name)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: Any) -> Any:
        metadata = request.data.get("metadata", {})
        return self._stored(request, request.namespace or metadata.get("namespace"), metadata.get("name")).raw

    async def _serve_update(self, request: Any) -> Any:
        return self._stored(request, request.namespace, request.name).last.raw

    async def _serve_delete(self, request: Any) -> Any:
        return self._stored(request, request.namespace, request.name).last.raw

    def _live(self, request: Any) -> dict[str, Any] | None:
        """A copy of the stored object the request names (None: there is none)."""
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return _copy(self._objects[key].raw)

    async def _store(self, request: Any, body: dict[str, Any], new: bool) -> None:
        """Save an object this class wrote itself, and tell the watchers (callers hold self._lock)."""
        key = (request.resource, request.namespace, request.name)
        if new:
            self._objects[key] = body
        else:
            self._objects[key].create(body)
        await self._buses[request.resource].put({"type": "ADDED" if new else "MODIFIED", "object": body})

    # --- writes -----------------------------------------------------------------------
    def _admit(self, kind: str, obj: dict[str, Any], creating: bool) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        cause = self.switches.server_errors.get((kind, name))
        if cause is not None:
            raise _error(500, "InternalError", f"Internal error occurred: {cause}", kind, name)
        denial = self.switches.denials.get((kind, name))
        if denial is not None:
            message = f'admission webhook "{WEBHOOK}" denied the request: {denial}'
            raise _error(403, "Forbidden", message, kind, name)
        if self.switches.validation:
            errors = admission.object_errors(kind, obj, creating)
            if errors:
                raise _error(422, "Invalid", admission.invalid_message(kind, name, errors), kind, name)

    async def _create(self, request: Any, kind: str) -> Any:
        body: dict[str, Any] = request.data
        self._admit(kind, body, creating=True)
        metadata = body.setdefault("metadata", {})
        if kind == "Lease" and self.switches.resource_versions:
            metadata["resourceVersion"] = str(next(self._versions))
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", now_rfc3339())
        metadata.setdefault("generation", 1)
        namespace = request.namespace or metadata.get("namespace")
        key = (str(request.resource.plural), namespace, metadata.get("name"))
        if kind == "Pod" and self.switches.quota:
            async with self._admission:  # count and create as one step, as the quota admission plugin does
                self._check_quota(namespace, body)
                response = await super()._handle(request)
        else:
            response = await super()._handle(request)
        if response.status in (200, 201):
            self.ownership[key] = {}
            ssa.record_update(self.ownership[key], request.params.get("fieldManager") or "unknown", None, body)
            response = _created(response)
        return response

    def _check_quota(self, namespace: str | None, pod: dict[str, Any]) -> None:
        pods = [
            obj.raw
            for (resource, ns, _), obj in self._objects.items()
            if resource.plural == "pods" and ns == namespace and not obj.deleted
        ]
        refusal = admission.quota_refusal("test-quota", self.switches.quota, pods, pod)
        if refusal is not None:
            raise _error(403, "Forbidden", refusal, "pods", (pod.get("metadata") or {}).get("name", ""))

    async def _update(self, request: Any, kind: str, key: tuple[str, str | None, str]) -> Any:
        """A merge patch: admitted as merged, owned by its manager for exactly what it changes."""
        patch = request.data if isinstance(request.data, dict) else {}
        finishing = False
        async with self._lock:  # read, merge and store as one step: no concurrent write is lost
            before = self._live(request)
            if before is None:
                after = None
            else:
                after = ssa.merge(before, patch)
                self._admit(kind, after, creating=False)
                if after.get("spec") != before.get("spec") and "generation" not in (patch.get("metadata") or {}):
                    generation = int(before["metadata"].get("generation") or 1) + 1
                    patch.setdefault("metadata", {})["generation"] = generation
                    after["metadata"] = {**after["metadata"], "generation": generation}
                finishing = bool((after.get("metadata") or {}).get("deletionTimestamp"))
                if not finishing:  # stored as merged here: KMock's own merge copies the whole object
                    await self._store(request, after, new=False)
        if before is None or after is None or finishing:
            # KMock answers 404, or merges the patch itself and removes the object once no finalizer is left.
            response = await super()._handle(request)
        else:
            response = await super(kmock.KubernetesEmulator, self)._handle(request)
        if before is not None and after is not None and response.status == 200:
            manager = request.params.get("fieldManager") or "unknown"
            ssa.record_update(self.ownership.setdefault(key, {}), manager, before, after)
        return response

    async def _apply(self, request: Any, kind: str, key: tuple[str, str | None, str]) -> Any:
        manager = request.params.get("fieldManager")
        if not manager:
            raise _error(422, "Invalid", "PATCH apply requests need fieldManager", kind, key[2])
        config = _copy(request.data)
        async with self._lock:
            live = self._live(request)
            ownership = copy.deepcopy(self.ownership.get(key, {}))
            try:
                result = ssa.apply(live, ownership, manager, config, request.params.get("force") == "true")
            except ssa.ApplyConflict as conflict:
                raise _error(409, "Conflict", str(conflict), kind, key[2]) from None
            self._admit(kind, result, creating=live is None)
            metadata = result.setdefault("metadata", {})
            metadata["namespace"] = request.namespace
            if live is None:
                metadata.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
            elif result.get("spec") != live.get("spec"):
                metadata["generation"] = int(live["metadata"].get("generation") or 1) + 1
            self.ownership[key] = ownership
            if result != live:
                await self._store(request, result, new=live is None)
        # Stored; now answer as kmock would (a test's reactions first, e.g. a hang), bypassing
        # KubernetesEmulator's own merge of the patch.
        response = await super(kmock.KubernetesEmulator, self)._handle(request)
        return _created(response) if live is None else response

    async def _serve_replace(self, request: Any) -> dict[str, Any]:
        """PUT: the object becomes the body (uid and creation time kept); 404 when there is none.
        With `resource_versions`, a Lease's body must carry its current resourceVersion, else 409."""
        resource = request.resource
        kind = KINDS.get(resource.plural) if resource is not None else None
        if kind is None or not request.name:
            raise _error(405, "MethodNotAllowed", "PUT needs an object's path")
        body = _copy(request.data) if isinstance(request.data, dict) else {}
        async with self._lock:
            live = self._live(request)
            if live is None:
                raise _error(404, "NotFound", f'{resource.plural} "{request.name}" not found', kind, request.name)
            metadata = body.setdefault("metadata", {})
            versioned = kind == "Lease" and self.switches.resource_versions
            sent = metadata.get("resourceVersion")
            if versioned and sent is not None and sent != live["metadata"].get("resourceVersion"):
                message = (
                    f'Operation cannot be fulfilled on {resource.plural} "{request.name}": the object has been '
                    "modified; please apply your changes to the latest version and try again"
                )
                raise _error(409, "Conflict", message, kind, request.name)
            for kept in ("uid", "creationTimestamp", "namespace", "name"):
                metadata[kept] = live["metadata"].get(kept)
            if versioned:
                metadata["resourceVersion"] = str(next(self._versions))
            await self._store(request, body, new=False)
        return body

    async def _linger(self, request: Any, key: tuple[str, str | None, str]) -> Any | None:
        """A graceful delete of a pod on a lost node: marked, never finished. None: delete normally."""
        pod = self._live(request)
        options = request.data if isinstance(request.data, dict) else {}
        if pod is None or (pod.get("spec") or {}).get("nodeName") not in self.switches.lost_nodes:
            return None
        if options.get("gracePeriodSeconds") == 0:
            return None
        async with self._lock:
            metadata = pod["metadata"]
            if not metadata.get("deletionTimestamp"):
                grace = options.get("gracePeriodSeconds")
                if grace is None:
                    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                ends = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=int(grace))
                metadata["deletionTimestamp"] = ends.strftime("%Y-%m-%dT%H:%M:%SZ")
                metadata["deletionGracePeriodSeconds"] = int(grace)
                await self._store(request, pod, new=False)
        return aiohttp.web.json_response(pod)
