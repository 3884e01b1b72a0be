"""How a TrainingJob pod's launcher ends: signals turned into an exception it can clean up after,
and the termination message the operator reads (the container's termination log, JSON under
4 KiB: `{"model": ...}` or `{"error": ...}`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from types import FrameType

from maas_workloads import contract
from maas_workloads.train.errors import LaunchError

log = logging.getLogger("maas_workloads.launch")


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived: clean up and exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGINT into Terminated; again after ray.init, whose core worker replaces them."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def termination_log_path() -> str:
    return os.environ.get(contract.ENV_TERMINATION_LOG, contract.TERMINATION_LOG)


def _without_metrics(model: contract.ModelReport) -> contract.ModelReport:
    """The report without metrics (the manifest keeps them), so that it fits the termination log."""
    short: contract.ModelReport = {"uri": model["uri"], "sha256": model["sha256"]}
    if "variants" in model:
        short["variants"] = [{**variant, "metrics": {}} for variant in model["variants"]]
    return short


def write_termination_message(message: contract.TerminationMessage) -> None:
    """JSON under 4 KiB; an error message is cut, a model's metrics are dropped before its URI."""
    data = json.dumps(message, separators=(",", ":"))
    if len(data.encode()) > contract.TERMINATION_MESSAGE_MAX_BYTES and "model" in message:
        message = {"model": _without_metrics(message["model"])}
        data = json.dumps(message, separators=(",", ":"))
    if len(data.encode()) > contract.TERMINATION_MESSAGE_MAX_BYTES and "error" in message:
        budget = contract.TERMINATION_MESSAGE_MAX_BYTES - 64
        data = json.dumps({"error": message["error"].encode()[:budget].decode(errors="ignore") + " ..."})
    try:
        with open(termination_log_path(), "w") as handle:
            handle.write(data)
    except OSError as error:
        log.warning("cannot write the termination message to %s: %s", termination_log_path(), error)


def terminated(signal_: Terminated) -> int:
    write_termination_message({"error": f"terminated by {signal_}"})
    return contract.SIGNAL_EXIT_BASE + signal_.signum


def terminated_cause(error: BaseException) -> Terminated | None:
    """The signal behind an error: Ray's C extension wraps a Terminated raised inside ray.get (e.g. while
    trainer.fit() waits) into a SystemError, which must still count as the platform's, not the job's."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, Terminated):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def fail(error: LaunchError) -> int:
    log.error("%s (exit %d)", error, int(error.exit_code))
    write_termination_message({"error": str(error)})
    return int(error.exit_code)
