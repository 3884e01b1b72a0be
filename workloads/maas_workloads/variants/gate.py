"""Which variants are published: the accuracy (or perplexity) a variant may cost, and the report of each.

`spec.output.maxAccuracyDrop` is in accuracy points (percentage points: 1.0 allows 0.95 -> 0.94)
for classifiers, and a perplexity ratio (1.05 allows 5% more) for causal LMs. A variant that costs
more is not published: the manifest's `rejectedVariants` says by how much, and the head reports
it in `status.model.variants`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outcome:
    """What became of one requested variant."""

    name: str
    published: bool
    message: str
    metrics: dict[str, float] = field(default_factory=dict)


def accuracy_outcome(name: str, metrics: dict[str, float], full_accuracy: float, max_drop: float | None) -> Outcome:
    """Judge a classifier's variant: `metrics` holds its `val_accuracy` (0..1); the drop is in points."""
    accuracy = metrics["val_accuracy"]
    drop = round((full_accuracy - accuracy) * 100, 4)
    metrics = {**metrics, "val_accuracy_drop": drop}
    numbers = f"val_accuracy {accuracy:.4f} vs {full_accuracy:.4f} for the full model, a drop of {drop:.2f} points"
    if max_drop is not None and drop > max_drop:
        return Outcome(name, False, f"{numbers}, more than maxAccuracyDrop {max_drop:g}: not published", metrics)
    return Outcome(name, True, numbers, metrics)


def perplexity_outcome(
    name: str, metrics: dict[str, float], full_perplexity: float, max_ratio: float | None
) -> Outcome:
    """Judge a causal LM's variant: `metrics` holds its `val_perplexity`; the limit is a ratio to the full model's."""
    perplexity = metrics["val_perplexity"]
    ratio = round(perplexity / full_perplexity, 6)
    metrics = {**metrics, "val_perplexity_ratio": ratio}
    numbers = f"val_perplexity {perplexity:.4f} vs {full_perplexity:.4f} for the full model, a ratio of {ratio:.4f}"
    if max_ratio is not None and ratio > max_ratio:
        return Outcome(name, False, f"{numbers}, more than maxAccuracyDrop {max_ratio:g}: not published", metrics)
    return Outcome(name, True, numbers, metrics)


MAX_MESSAGE = 300
"""Characters of a conversion error kept: every outcome must fit the head's 4 KiB termination message."""


def failed(name: str, error: Exception) -> Outcome:
    """A variant whose conversion failed: not published, the full model still is."""
    text = f"{type(error).__name__}: {error}"
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 4] + " ..."
    return Outcome(name, False, f"conversion failed: {text}")
