"""Code that runs inside the pods: the training launcher and trainer, and the inference server.

`report`, `get_checkpoint` and `save_model` are the SDK for training code run by a TrainingJob;
they are imported on first use, so the operator can import `maas_workloads.contract` without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maas_workloads.train.sdk import get_checkpoint, report, save_model

__all__ = ["get_checkpoint", "report", "save_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from maas_workloads.train import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'maas_workloads' has no attribute {name!r}")
