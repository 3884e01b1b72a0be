"""The kubelet's part of `maas run`: containers as local processes, Secrets from the same files.

A container is started with its own command and environment; what differs outside a cluster is
mapped under one work directory: claims (PVC_MOUNT_ROOT) and Secret volumes become directories
there, and every variable naming a path inside them is rewritten to the local copy.
"""

from __future__ import annotations

import base64
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from maas_workloads import contract

STOP_GRACE_SECONDS = 60.0


class RunError(Exception):
    """The local run cannot go on; the message says why."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def secrets_of(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The Secrets defined in the same files, decoded: name -> key -> value."""
    found: dict[str, dict[str, str]] = {}
    for document in documents:
        if document.get("kind") != "Secret":
            continue
        values = {key: base64.b64decode(value).decode() for key, value in (document.get("data") or {}).items()}
        values.update({key: str(value) for key, value in (document.get("stringData") or {}).items()})
        found[(document.get("metadata") or {}).get("name", "")] = values
    return found


class LocalKubelet:
    """Runs containers as local processes under one work directory, and stops them all at the end."""

    def __init__(self, workdir: pathlib.Path, secrets: Mapping[str, Mapping[str, str]], out: TextIO) -> None:
        self.workdir = workdir.resolve()
        self.secrets = secrets
        self.out = out
        self.processes: list[subprocess.Popen[bytes]] = []
        self.volumes = self.workdir / "volumes"
        self.volumes.mkdir(parents=True, exist_ok=True)
        self.mounts: dict[str, pathlib.Path] = {}
        """A container's mount path -> the local directory holding that volume's files."""

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def localize(self, value: str) -> str:
        """Claims mounted under PVC_MOUNT_ROOT, and mounted Secrets, live under the work directory here."""
        value = value.replace(f"file://{contract.PVC_MOUNT_ROOT}/", f"file://{self.volumes}/")
        for mount_path, directory in self.mounts.items():
            if value == mount_path or value.startswith(f"{mount_path}/"):
                return f"{directory}{value[len(mount_path) :]}"
        return value

    def mount_secrets(self, pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> None:
        """Write the Secret volumes `container` mounts as files only this user can read (as the kubelet does
        with its own mode), and map their mount paths for `localize`. RunError names a missing Secret or key."""
        sources = {volume["name"]: volume["secret"] for volume in pod_spec.get("volumes") or [] if "secret" in volume}
        for mount in container.get("volumeMounts") or []:
            source = sources.get(mount["name"])
            if source is None:
                continue
            values = self.secret(source["secretName"])
            items = source.get("items") or [{"key": key, "path": key} for key in values]
            directory = self.workdir / "secrets" / mount["name"]
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
            for item in items:
                if item["key"] not in values:
                    raise RunError(f"volume {mount['name']}: Secret {source['secretName']} has no key {item['key']}")
                target = directory / item["path"]
                target.touch(mode=0o600)
                target.write_text(values[item["key"]])
            self.mounts[mount["mountPath"]] = directory

    def environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            env.update(self.secret(source["secretRef"]["name"]))
        for variable in container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = self.localize(str(variable["value"]))
                continue
            reference = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if reference is None:
                raise RunError(f"env {variable['name']}: only values and secretKeyRef work outside a cluster")
            secret = self.secret(reference["name"])
            if reference["key"] not in secret:
                raise RunError(f"env {variable['name']}: Secret {reference['name']} has no key {reference['key']}")
            env[variable["name"]] = secret[reference["key"]]
        return env

    def secret(self, name: str) -> Mapping[str, str]:
        """The Secret's decoded keys; RunError when the files given to `maas run` do not define it."""
        if name in self.secrets:
            return self.secrets[name]
        raise RunError(f"Secret {name} is referenced but not defined in the files given to `maas run`")

    def start(self, name: str, container: Mapping[str, Any], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        command = [sys.executable if part == "python" else part for part in container["command"]]
        command += list(container.get("args") or [])
        root = pathlib.Path(__file__).resolve().parents[2]
        path = os.pathsep.join([str(root / "operator"), str(root / "workloads"), os.environ.get("PYTHONPATH", "")])
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command,
            env={**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self.processes.append(process)
        self.say(f"started {name} (pid {process.pid}, log {self.workdir / f'{name}.log'})")
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)


@contextmanager
def local_kubelet(
    workdir: pathlib.Path, secrets: Mapping[str, Mapping[str, str]], out: TextIO
) -> Iterator[LocalKubelet]:
    kubelet = LocalKubelet(workdir, secrets, out)
    try:
        yield kubelet
    finally:
        kubelet.stop_all()
