"""Pod entrypoint of a TrainingJob: `python -m maas_workloads.launch head|worker`.

head:   starts the Ray head, serves progress on :8090, waits for minReplicas workers, runs the
        driver (the built-in trainer, or the spec's command), writes the termination message
        and exits 0, 1, 64 or 75 (contract.ExitCode).
worker: joins the head as a Ray node offering one Ray Train worker slot, and exits cleanly
        once the head is gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from maas_workloads import artifact, contract, storage
from maas_workloads.termination import (
    Terminated,
    fail,
    install_signal_handlers,
    terminated,
    terminated_cause,
    write_termination_message,
)
from maas_workloads.train.config import DATA_RESOURCE, DATA_TASKS_PER_WORKER, WORKER_RESOURCE, JobContext
from maas_workloads.train.errors import ApplicationError, ConfigurationError, InfrastructureError, LaunchError

log = logging.getLogger("maas_workloads.launch")

RAY_READY_SECONDS = 120.0
HEAD_GONE_SECONDS = 15.0
"""A worker leaves once the head's GCS port has refused connections this long."""
POLL_SECONDS = 1.0
STARTUP_POLL_SECONDS = 0.2
"""While the attempt starts (the head's GCS port, workers joining), polls are cheap and every second
waited delays the first step: a worker sees the head 0.4 s sooner on average than with POLL_SECONDS."""
WORKER_NICENESS_ENV = "RAY_worker_niceness"
"""Ray starts its worker processes at niceness 15 by default, so that on big shared nodes they yield the
CPU to the GCS and raylet. A worker pod has no GCS and its training worker is the pod's whole job, so
its Ray node starts workers at niceness 0 (unless the pod's env says otherwise); where processes share
one machine (`maas run`), training then gets an equal share instead of yielding to everything else."""
STOP_GRACE_SECONDS = 15.0


# --- Ray processes -------------------------------------------------------------------------------


def _ray_start_args() -> list[str]:
    return shlex.split(os.environ.get(contract.ENV_RAY_START_ARGS, ""))


@contextmanager
def ray_node(arguments: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`ray start --block` in its own process group; the whole group is stopped on exit."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", *arguments]
    log.info("starting a Ray node: %s", shlex.join(command[3:]))
    process = subprocess.Popen(command, start_new_session=True, env={**os.environ, **(env or {})})
    try:
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            # The group may outlive its leader (raylet, workers): reap them with SIGKILL next.
            if sig == signal.SIGTERM:
                time.sleep(0.5)
        except subprocess.TimeoutExpired:
            continue


def port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _node_ip(arguments: list[str]) -> str:
    for index, argument in enumerate(arguments):
        if argument.startswith("--node-ip-address="):
            return argument.split("=", 1)[1]
        if argument == "--node-ip-address" and index + 1 < len(arguments):
            return arguments[index + 1]
    import ray.util

    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


# --- Head ----------------------------------------------------------------------------------------


def joined_workers() -> int:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return sum(1 for node in nodes if node.get("Alive") and node.get("Resources", {}).get(WORKER_RESOURCE))


def wait_for_workers(context: JobContext, deadline_seconds: float) -> int:
    deadline = time.monotonic() + deadline_seconds
    joined = 0
    while time.monotonic() < deadline:
        joined = joined_workers()
        if joined >= context.min_workers:
            log.info("%d of %d workers joined", joined, context.workers)
            return joined
        time.sleep(STARTUP_POLL_SECONDS)
    raise InfrastructureError(
        f"only {joined} of the {context.min_workers} required workers joined the Ray head within "
        f"{deadline_seconds:.0f}s (spec.runPolicy.startupDeadlineSeconds); check the worker pods"
    )


def _connect(node: subprocess.Popen[bytes], host: str, port: int) -> None:
    """Wait for the local Ray head's GCS, then attach this process to it as a driver."""
    import ray

    deadline = time.monotonic() + RAY_READY_SECONDS
    while not port_open(host, port):
        if node.poll() is not None:
            raise InfrastructureError(f"the Ray head exited with code {node.returncode} while starting")
        if time.monotonic() > deadline:
            raise InfrastructureError(f"the Ray head did not open {host}:{port} within {RAY_READY_SECONDS:.0f}s")
        time.sleep(STARTUP_POLL_SECONDS)
    try:
        ray.init(address=f"{host}:{port}", logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as error:
        raise InfrastructureError(f"cannot attach to the Ray head at {host}:{port}: {error}") from error
    install_signal_handlers()


def run_user_command(context: JobContext, address: str) -> None:
    command = [*context.spec.command, *context.spec.args]
    env = {**os.environ, "RAY_ADDRESS": address}
    log.info("running the driver: %s", shlex.join(command))
    try:
        process = subprocess.Popen(command, env=env)
    except OSError as error:
        raise ConfigurationError(f"spec.command: cannot run {command[0]!r}: {error}") from error
    try:
        code = process.wait()
    except Terminated:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    if code == 0:
        return
    reason = f"the driver {shlex.join(command)} exited with code {code}"
    if code == contract.ExitCode.CONFIGURATION_ERROR:
        raise ConfigurationError(reason)
    if code == contract.ExitCode.INFRASTRUCTURE_ERROR:
        raise InfrastructureError(reason)
    raise ApplicationError(reason)


def interruptible(function: Callable[[], None]) -> None:
    """Run `function` (the Ray Train driver) in a thread while the main thread waits for it.

    Python runs signal handlers only in the main thread, and a blocking `ray.get` there keeps
    SIGTERM's Terminated pending until the whole fit() returns: the attempt would go on training
    until the kubelet's SIGKILL. Waiting here instead ends the attempt at once.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=target, name="ray-train-driver", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=POLL_SECONDS)
    if failure:
        raise failure[0]


def published_model(context: JobContext) -> contract.ModelReport:
    """The artifact this job published, read back from the output location."""
    from maas_workloads.train.publish import published_adapter, read_published

    try:
        manifest, digest = read_published(context.output_uri)
        adapter = published_adapter(context.output_uri)
    except storage.ObjectNotFoundError as error:
        raise ApplicationError(
            f"the driver finished without publishing a model to {context.output_uri} "
            "(call maas_workloads.save_model from the training function)"
        ) from error
    except storage.StorageUnavailableError as error:
        raise InfrastructureError(f"cannot read the published model: {error}") from error
    except artifact.ArtifactError as error:
        raise ApplicationError(str(error)) from error
    if context.uid and manifest.source.uid != context.uid:
        raise ApplicationError(
            f"the model at {context.output_uri} was published by another job ({manifest.source.uid}), not this one: "
            "the driver did not call maas_workloads.save_model"
        )
    report: contract.ModelReport = {"uri": context.output_uri, "sha256": digest, "metrics": manifest.metrics}
    if adapter is not None:
        report["adapter"] = adapter
    if not isinstance(manifest, artifact.AdapterManifest) and (manifest.variants or manifest.rejected_variants):
        published: list[contract.VariantReport] = [
            {"name": name, "published": True, "message": variant.summary or "", "metrics": variant.metrics}
            for name, variant in manifest.variants.items()
        ]
        refused: list[contract.VariantReport] = [
            {"name": name, "published": False, "message": rejected.message, "metrics": rejected.metrics}
            for name, rejected in manifest.rejected_variants.items()
        ]
        report["variants"] = published + refused
    return report


def import_ray_train() -> None:
    """Import Ray Train's TorchTrainer (about a second of CPU here), which the built-in trainer's driver
    needs: called while the Ray head starts in its own processes, it overlaps that instead of following
    the workers' joining."""
    import ray.train.torch  # noqa: F401


def run_head(context: JobContext) -> int:
    import ray

    from maas_workloads.train.driver import check_storage, prepare_builtin, run_builtin
    from maas_workloads.train.progress import ProgressServer, ProgressState

    progress = ProgressState(context.attempt)
    try:
        server = ProgressServer(progress, context.progress_port, context.uid)
    except OSError as error:
        return fail(InfrastructureError(f"cannot serve progress on port {context.progress_port}: {error}"))
    server.start()
    extra = _ray_start_args()
    arguments = [
        "--head",
        f"--port={context.head_port}",
        # The head schedules no training: each worker pod runs exactly one Ray Train worker.
        "--num-cpus=0",
        "--num-gpus=0",
        "--dashboard-host=0.0.0.0",
        f"--dashboard-port={contract.RAY_DASHBOARD_PORT}",
        f"--ray-client-server-port={contract.RAY_CLIENT_PORT}",
        *extra,
    ]
    try:
        check_storage(context)
        data = prepare_builtin(context) if context.spec.trainer is not None else None
        # Ending the attempt is deliberate: no point draining the head for Ray's graceful handover.
        with ray_node(arguments, {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}) as node:
            if data is not None:
                import_ray_train()
            node_ip = _node_ip(extra)
            address = f"{node_ip}:{context.head_port}"
            _connect(node, node_ip, context.head_port)
            wait_for_workers(context, context.spec.run_policy.startup_deadline_seconds)
            if data is not None:
                interruptible(lambda: run_builtin(context, data))
            else:
                run_user_command(context, address)
            model = published_model(context)
            ray.shutdown()
    except LaunchError as error:
        return fail(error)
    except Terminated as signal_:
        return terminated(signal_)
    except Exception as error:
        cause = terminated_cause(error)
        if cause is not None:
            return terminated(cause)
        log.exception("the head failed")
        return fail(ApplicationError(f"{type(error).__name__}: {error}"))
    finally:
        server.stop()
        if ray.is_initialized():
            ray.shutdown()
    write_termination_message({"model": model})
    log.info("published %s (sha256 %s)", model["uri"], model["sha256"])
    return int(contract.ExitCode.SUCCESS)


# --- Worker --------------------------------------------------------------------------------------


def run_worker(context: JobContext) -> int:
    deadline = time.monotonic() + context.spec.run_policy.startup_deadline_seconds
    while not port_open(context.head_host, context.head_port):
        if time.monotonic() > deadline:
            return fail(
                InfrastructureError(
                    f"the Ray head {context.head_address} was not reachable within "
                    f"{context.spec.run_policy.startup_deadline_seconds}s"
                )
            )
        time.sleep(STARTUP_POLL_SECONDS)
    arguments = [
        f"--address={context.head_address}",
        f"--num-cpus={context.cpus_per_worker}",
        f"--num-gpus={context.gpus_per_worker}",
        f"--resources={json.dumps({WORKER_RESOURCE: 1, DATA_RESOURCE: DATA_TASKS_PER_WORKER})}",
        *_ray_start_args(),
    ]
    try:
        niceness = {WORKER_NICENESS_ENV: os.environ.get(WORKER_NICENESS_ENV, "0")}
        with ray_node(arguments, niceness) as node:
            unreachable_since: float | None = None
            while True:
                time.sleep(POLL_SECONDS)
                if port_open(context.head_host, context.head_port):
                    unreachable_since = None
                else:
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since >= HEAD_GONE_SECONDS:
                        log.info("the Ray head %s is gone; leaving", context.head_address)
                        return int(contract.ExitCode.SUCCESS)
                if node.poll() is not None and unreachable_since is None:
                    return fail(InfrastructureError(f"the Ray worker node exited with code {node.returncode}"))
    except Terminated as signal_:
        return contract.SIGNAL_EXIT_BASE + signal_.signum


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maas_workloads.launch", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["head", "worker"])
    role = parser.parse_args(argv).role
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_signal_handlers()
    # Models and tokenizers come from the job's URIs, never from the Hugging Face Hub (pods may have no internet).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        context = JobContext.from_env()
    except ConfigurationError as error:
        return fail(error)
    return run_head(context) if role == "head" else run_worker(context)


if __name__ == "__main__":
    sys.exit(main())
