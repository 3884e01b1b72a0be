"""The container images: what the Dockerfiles say (parsed by Docker's own parser, through the
`dockerfile` package: no Docker here to build them), and that every version names the chart's
appVersion.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import re
import subprocess
import sys
import tomllib
from typing import Any

import dockerfile
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from maas_operator import config

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "maas-operator"
OPERATOR_DOCKERFILE = REPO / "operator" / "Dockerfile"
WORKLOADS_DOCKERFILE = REPO / "workloads" / "Dockerfile"
README = (REPO / "README.md").read_text()
APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def commands(path: pathlib.Path) -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(path)))


def final_stage(parsed: list[dockerfile.Command]) -> list[dockerfile.Command]:
    start = max(i for i, command in enumerate(parsed) if command.cmd == "FROM")
    return parsed[start:]


def build_commands(path: pathlib.Path) -> list[tuple[str, str]]:
    """(image, tag) of every `docker build ... -f <path> -t <image>:<tag>` in the file's comments."""
    text = path.read_text()
    relative = path.relative_to(REPO)
    found = re.findall(rf"docker build -f {relative} (?:--build-arg \S+ )*-t (\S+):(\S+) \.", text)
    return [(image, tag) for image, tag in found]


def test_versions_follow_the_charts_app_version() -> None:
    assert PYPROJECT["project"]["version"] == APP_VERSION, "pyproject's version is the chart's appVersion"
    assert VALUES["image"]["tag"] == "", "the operator image's tag defaults to appVersion"
    operator_image = VALUES["image"]["repository"]
    workload_images = {VALUES["workloadImages"]["training"], VALUES["workloadImages"]["serving"], config.DEFAULT_IMAGE}
    assert {image.rpartition(":")[2] for image in workload_images} == {APP_VERSION}
    (workloads_image,) = {image.rpartition(":")[0] for image in workload_images}
    assert build_commands(OPERATOR_DOCKERFILE) == [(operator_image, APP_VERSION)]
    assert (workloads_image, APP_VERSION) in build_commands(WORKLOADS_DOCKERFILE)
    for path, image in ((OPERATOR_DOCKERFILE, operator_image), (WORKLOADS_DOCKERFILE, workloads_image)):
        command = f"docker build -f {path.relative_to(REPO)} -t {image}:{APP_VERSION} ."
        assert command in README, f"README.md shows how to build {image}: {command}"


@pytest.mark.parametrize("dockerfile", [OPERATOR_DOCKERFILE, WORKLOADS_DOCKERFILE], ids=["operator", "workloads"])
def test_image_bases_are_pinned(dockerfile: pathlib.Path) -> None:
    for base in (c.value[0] for c in commands(dockerfile) if c.cmd == "FROM"):
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), (
            f"{dockerfile.relative_to(REPO)}: {base}: pin the base to a Python patch release and a Debian release"
        )


def test_operator_image_is_non_root_and_runs_maas_operator() -> None:
    parsed = commands(OPERATOR_DOCKERFILE)
    final = final_stage(parsed)
    (user,) = [c.value[0] for c in final if c.cmd == "USER"]
    uid, _, gid = user.partition(":")
    pod = VALUES_POD_SECURITY
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid: runAsNonRoot can only check a number"
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"]), "the uid the chart runs it as"
    entrypoint = next(c for c in final if c.cmd == "ENTRYPOINT")
    cmd = next(c for c in final if c.cmd == "CMD")
    assert entrypoint.json and cmd.json, "exec form: SIGTERM reaches the operator, which releases its Lease"
    assert [*entrypoint.value, *cmd.value][:2] == ["maas", "operator"]
    exposed = {int(port) for c in final if c.cmd == "EXPOSE" for port in c.value}
    assert exposed == {VALUES["metrics"]["port"], VALUES["healthPort"]}
    installs = " ".join(c.value[0] for c in parsed if c.cmd == "RUN" and "pip install" in c.value[0])
    assert "--constraint constraints.txt '.[operator]'" in installs
    assert not re.search(r"torch|ray|\[(train|serve|all|dev)", installs), "only the operator extra"


VALUES_POD_SECURITY: dict[str, Any] = yaml.safe_load(
    (CHART / "templates" / "deployment.yaml")
    .read_text()
    .split("      securityContext:\n", 1)[1]
    .split("      containers:")[0]
)


def test_workloads_image_is_non_root() -> None:
    final = final_stage(commands(WORKLOADS_DOCKERFILE))
    (user,) = [c.value[0] for c in final if c.cmd == "USER"]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0


IMPORTS = """
import importlib.metadata, json, re, sys
allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()
# What the image would not have is absent here too: a None in sys.modules makes `import x` fail
# and importlib.util.find_spec("x") answer None (kopf imports the `kubernetes` client when present).
for name, dists in owners.items():
    if name not in sys.stdlib_module_names and not {re.sub(r"[-_.]+", "-", d).lower() for d in dists} & allowed:
        sys.modules[name] = None
import maas_operator.cli, maas_operator.handlers
loaded = [name for name, module in list(sys.modules.items()) if module is not None]
print(json.dumps(sorted({d for name in loaded for d in owners.get(name.split(".")[0], [])})))
"""


def requirement_closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install, as installed here (markers evaluated, extras followed)."""
    found: set[str] = set()
    pending = [(Requirement(text), "") for text in requirements]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        for text in importlib.metadata.requires(requirement.name) or []:
            pending.extend((Requirement(text), wanted) for wanted in ["", *requirement.extras])
    return found


@pytest.mark.slow
def test_the_operator_runs_on_what_the_operator_extra_installs() -> None:
    project = PYPROJECT["project"]
    allowed = requirement_closure([*project["dependencies"], *project["optional-dependencies"]["operator"]])
    probe = [sys.executable, "-c", IMPORTS, json.dumps(sorted(allowed | {"maas-operator"}))]
    result = subprocess.run(probe, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    imported = {canonicalize_name(name) for name in json.loads(result.stdout)}
    assert {"kopf", "kubernetes-asyncio", "aiohttp", "prometheus-client", "pydantic"} <= imported
    assert not imported & {"torch", "ray", "numpy", "kubernetes"}
