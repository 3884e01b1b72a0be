"""`maas run`'s view of a training run: a live progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

BAR_WIDTH = 24
_SHOWN = (("loss", "loss", "{:.3f}"), ("val_loss", "val", "{:.3f}"), ("val_perplexity", "ppl", "{:.2f}"))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressDisplay:
    """Shows the head's progress reports (contract.ProgressReport) as they change.

    On a terminal: one line redrawn in place, `[#####...] 42% 420/1000 loss 0.53 ppl 1.91 12.3k tok/s ETA 1:23`.
    Otherwise (logs, CI): one plain line per new report, every metric included.
    """

    def __init__(self, out: TextIO, tty: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.clock = clock
        self._last = ""
        self._first: tuple[float, int] | None = None
        self._width = 0

    def update(self, report: Mapping[str, Any]) -> None:
        step, total = int(report.get("step") or 0), int(report.get("totalSteps") or 0)
        if step and (self._first is None or step < self._first[1]):
            self._first = (self.clock(), step)
        line = self.bar(report, step, total) if self.tty else self.plain(report)
        if line == self._last:
            return
        self._last = line
        if self.tty:
            padding = " " * max(0, self._width - len(line))
            self.out.write(f"\r{line}{padding}")
            self._width = len(line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def finish(self) -> None:
        """End the bar's line, so what follows starts on a fresh one."""
        if self.tty and self._last:
            self.out.write("\n")
            self.out.flush()
        self._last, self._width = "", 0

    def eta(self, step: int, total: int) -> float | None:
        """Seconds left at the rate since the first step seen, or None before there is a rate."""
        if self._first is None or total <= step:
            return None
        started, first_step = self._first
        elapsed = self.clock() - started
        if step <= first_step or elapsed <= 0:
            return None
        return (total - step) * elapsed / (step - first_step)

    def bar(self, report: Mapping[str, Any], step: int, total: int) -> str:
        metrics = report.get("metrics") or {}
        fraction = min(1.0, step / total) if total else 0.0
        filled = round(fraction * BAR_WIDTH)
        parts = [f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} {step}/{total or '?'}"]
        parts += [f"{label} {fmt.format(metrics[key])}" for key, label, fmt in _SHOWN if key in metrics]
        if "tokens_per_second" in metrics:
            parts.append(f"{metrics['tokens_per_second'] / 1000:.1f}k tok/s")
        elif "samples_per_second" in metrics:
            parts.append(f"{metrics['samples_per_second']:.0f} samples/s")
        if "val_accuracy" in metrics:
            parts.append(f"acc {metrics['val_accuracy']:.3f}")
        eta = self.eta(step, total)
        parts.append(f"ETA {_duration(eta)}" if eta is not None else "ETA ?")
        return " ".join(parts)

    @staticmethod
    def plain(report: Mapping[str, Any]) -> str:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted((report.get("metrics") or {}).items()))
        return (
            f"progress: attempt {report.get('attempt')}, epoch {report.get('epoch')}, "
            f"step {report.get('step')}/{report.get('totalSteps')} {metrics}"
        )
