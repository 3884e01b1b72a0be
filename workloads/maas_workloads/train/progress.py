"""The head's progress endpoint: `GET /progress` (contract.ProgressReport), `GET /metrics` (maas_train_*),
and `POST /progress`, through which the rank-0 training worker reports, authenticated by the job's UID."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from maas_workloads import contract

log = logging.getLogger(__name__)
JOB_UID_HEADER = "X-Maas-Job-Uid"
_MAX_UPDATE_BYTES = 64 * 1024


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ProgressState:
    """The attempt's latest progress, updated by the trainer and read by the operator."""

    def __init__(self, attempt: int) -> None:
        self._lock = threading.Lock()
        self._report: contract.ProgressReport = {
            "attempt": attempt,
            "epoch": 0,
            "step": 0,
            "totalSteps": 0,
            "metrics": {},
            "lastCheckpoint": None,
            "heartbeatTime": _now(),
        }
        self.registry = CollectorRegistry()
        self._step = Gauge("maas_train_step", "Optimizer steps taken, across attempts.", registry=self.registry)
        self._steps = Counter("maas_train_steps", "Optimizer steps taken by this attempt.", registry=self.registry)
        self._epoch = Gauge("maas_train_epoch", "Epochs completed.", registry=self.registry)
        self._total = Gauge("maas_train_total_steps", "Steps the run will take in all.", registry=self.registry)
        self._throughput = Gauge(
            "maas_train_samples_per_second", "Training samples per second, all workers.", registry=self.registry
        )
        self._loss = Gauge("maas_train_loss", "Latest training loss.", registry=self.registry)
        self._metric = Gauge("maas_train_metric", "Latest reported metrics.", ["name"], registry=self.registry)
        self._checkpoint_seconds = Histogram(
            "maas_train_checkpoint_duration_seconds",
            "Time to commit a checkpoint to storage.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self._heartbeat = Gauge(
            "maas_train_heartbeat_timestamp_seconds", "When progress was last reported.", registry=self.registry
        )
        self._heartbeat.set_to_current_time()

    def snapshot(self) -> contract.ProgressReport:
        with self._lock:
            return json.loads(json.dumps(self._report))  # type: ignore[no-any-return]

    def update(self, update: dict[str, Any]) -> None:
        """Apply one report from the trainer (fields of ProgressReport plus checkpointSeconds)."""
        with self._lock:
            report = self._report
            if "step" in update:
                step = int(update["step"])
                if step > report.get("step", 0):
                    self._steps.inc(step - report.get("step", 0))
                report["step"] = step
                self._step.set(step)
            if "epoch" in update:
                report["epoch"] = int(update["epoch"])
                self._epoch.set(report["epoch"])
            if "totalSteps" in update:
                report["totalSteps"] = int(update["totalSteps"])
                self._total.set(report["totalSteps"])
            metrics = {str(k): float(v) for k, v in (update.get("metrics") or {}).items()}
            if metrics:
                report["metrics"] = metrics
                for name, value in metrics.items():
                    self._metric.labels(name=name).set(value)
                if "loss" in metrics:
                    self._loss.set(metrics["loss"])
                if "samples_per_second" in metrics:
                    self._throughput.set(metrics["samples_per_second"])
            if update.get("lastCheckpoint"):
                report["lastCheckpoint"] = str(update["lastCheckpoint"])
            if update.get("checkpointSeconds") is not None:
                self._checkpoint_seconds.observe(float(update["checkpointSeconds"]))
            report["heartbeatTime"] = _now()
            self._heartbeat.set_to_current_time()


class ProgressServer:
    """Serves a ProgressState over HTTP on a background thread."""

    def __init__(self, state: ProgressState, port: int, job_uid: str, host: str = "0.0.0.0") -> None:
        handler = _handler(state, job_uid)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="progress-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(state: ProgressState, job_uid: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug("progress server: " + format, *args)

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode())

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == contract.PROGRESS_PATH:
                self._send(200, json.dumps(state.snapshot()).encode())
            elif path == contract.METRICS_PATH:
                self._send(200, generate_latest(state.registry), CONTENT_TYPE_LATEST)
            else:
                self._error(404, f"no such path {path}; try {contract.PROGRESS_PATH} or {contract.METRICS_PATH}")

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != contract.PROGRESS_PATH:
                self._error(404, "only /progress accepts reports")
                return
            if self.headers.get(JOB_UID_HEADER, "") != job_uid:
                self._error(403, f"{JOB_UID_HEADER} does not match this job")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_UPDATE_BYTES:
                self._error(413, "progress report too large")
                return
            try:
                update = json.loads(self.rfile.read(length))
                if not isinstance(update, dict):
                    raise ValueError("expected a JSON object")
                state.update(update)
            except (ValueError, TypeError) as error:
                self._error(400, f"bad progress report: {error}")
                return
            self._send(204, b"")

    return Handler


def post_progress(url: str, job_uid: str, update: dict[str, Any], timeout: float = 5.0) -> bool:
    """Send one report to the head; progress is best-effort and never fails training."""
    request = urllib.request.Request(
        url,
        data=json.dumps(update).encode(),
        headers={"Content-Type": "application/json", JOB_UID_HEADER: job_uid},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except (urllib.error.URLError, OSError) as error:
        log.warning("could not report progress to %s: %s", url, error)
        return False
