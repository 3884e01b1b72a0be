"""ONNX models, run by ONNX Runtime: the engine beside TorchScript and torch.export.

The session takes and returns torch tensors, like the torch engines, so the server's batching,
codecs and warm-up treat every format alike. Its intra-op threads follow torch's (OMP_NUM_THREADS,
which the operator derives from the pod's CPU request).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import torch

from maas_workloads.artifact import ArtifactError

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


class OnnxModule:
    """An ONNX Runtime session, called like a torch module: positional tensors in the order of the
    graph's inputs (the manifest's), a tuple of tensors in the order of its outputs."""

    def __init__(self, path: pathlib.Path, device: torch.device) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = [_CUDA, _CPU] if device.type == "cuda" else [_CPU]
        missing = [p for p in providers if p not in onnxruntime.get_available_providers()]
        if missing:
            raise ArtifactError(f"ONNX Runtime here has no {', '.join(missing)}: serve the variant on another device")
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own (pybind) exception types
            raise ArtifactError(f"{path.name} is not a model ONNX Runtime can load: {error}") from error
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = [node.name for node in self.session.get_outputs()]

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds: dict[str, Any] = {
            name: np.ascontiguousarray(tensor.detach().cpu().numpy())
            for name, tensor in zip(self.input_names, inputs, strict=True)
        }
        results = self.session.run(self.output_names, feeds)
        return tuple(torch.from_numpy(np.asarray(result)) for result in results)

    def check_names(self, inputs: list[str], outputs: list[str]) -> None:
        """Raise ArtifactError when the graph's input or output names differ from the manifest's."""
        if self.input_names != inputs or self.output_names != outputs:
            raise ArtifactError(
                f"the ONNX graph has inputs {self.input_names} and outputs {self.output_names}, "
                f"the manifest lists {inputs} and {outputs}"
            )
