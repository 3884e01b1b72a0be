"""`maas run`'s progress: a live bar on a terminal, one plain line per change otherwise."""

from __future__ import annotations

import io

from maas_operator.local_progress import ProgressDisplay


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def report(step: int, **metrics: float) -> dict[str, object]:
    return {"attempt": 1, "epoch": 0, "step": step, "totalSteps": 100, "metrics": metrics}


def test_plain_lines_only_when_something_changed() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=False)
    display.update(report(5, loss=2.5))
    display.update(report(5, loss=2.5))
    display.update(report(6, loss=2.25))
    display.finish()
    assert out.getvalue().splitlines() == [
        "progress: attempt 1, epoch 0, step 5/100 loss=2.5",
        "progress: attempt 1, epoch 0, step 6/100 loss=2.25",
    ]


def test_the_bar_shows_step_loss_perplexity_throughput_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    display = ProgressDisplay(out, tty=True, clock=clock)
    display.update(report(10, loss=1.5))
    clock.now = 10.0
    display.update(report(20, loss=1.25, val_loss=1.0, val_perplexity=2.718, tokens_per_second=12_345.0))
    display.finish()
    frames = out.getvalue().split("\r")
    assert frames[1].startswith("[##...") and "ETA ?" in frames[1]
    last = frames[2]
    assert (
        last.startswith("[#####...")
        and "20% 20/100" in last
        and "loss 1.250" in last
        and "ppl 2.72" in last
        and "12.3k tok/s" in last
    )
    assert last.rstrip().endswith("ETA 1:20")  # 80 steps left at one step per second
    assert out.getvalue().endswith("\n")
