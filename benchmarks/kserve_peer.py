"""The peer for benchmarks/serve_throughput.py: KServe's Python ModelServer on the same artifact.

A `kserve.Model` subclass, written the way KServe's custom-model guide shows, that loads the
same TorchScript file and answers Open Inference Protocol v2 requests.

    python benchmarks/kserve_peer.py --artifact DIR --name NAME --port PORT
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import uuid
from typing import Any

import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class TorchScriptModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, artifact: pathlib.Path) -> None:
        super().__init__(name)
        self.artifact = artifact
        self.module: Any = None
        self.output_name = "output"

    def load(self) -> bool:
        manifest = json.loads((self.artifact / "manifest.json").read_text())
        self.output_name = manifest["outputs"][0]["name"]
        self.module = torch.jit.load(str(self.artifact / manifest["modelFile"]), map_location="cpu")
        self.module.eval()
        self.ready = True
        return True

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        features = torch.from_numpy(payload.inputs[0].as_numpy())
        with torch.inference_mode():
            result = self.module(features).numpy()
        output = InferOutput(name=self.output_name, shape=list(result.shape), datatype="FP32")
        output.set_data_from_numpy(result, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id or str(uuid.uuid4()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=pathlib.Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    options, _ = parser.parse_known_args()
    sys.argv = sys.argv[:1]  # kserve parses its own flags from sys.argv at import and start
    model = TorchScriptModel(options.name, options.artifact)
    model.load()
    ModelServer(http_port=options.port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
