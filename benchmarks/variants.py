"""Optimized variants against the full model, in the same run: throughput through our server,
size on disk, and the accuracy (or perplexity) each costs.

Heavy MLP (the serve benchmark's 64 -> 4 x 2048 -> 10, here with the built-in MLP's input
standardisation) trained briefly on generated 10-class data, published with every variant by the
trainer's own export (each measured on the validation split); each is served by its own server
(one torch thread each) and loaded with one-row OIP v2 JSON requests by serve_throughput's
closed-loop generator, the contenders alternating, at each concurrency.

The ~85M-parameter Llama of llm_serve.py (random weights from a config, a generated corpus for
perplexity) published with its weight-only int8 variant; the full model and the variant are
served by the built-in engine and loaded with llm_serve's streaming chat clients.

Kernels: the in-process rates that chose the int8 implementations (see variants/tensor.py and
variants/causal_lm.py): fbgemm's dynamic int8 vs torchao's for the MLP, PyTorch's weight-only
int8 kernel vs torchao's for an LM-sized projection.

    python benchmarks/variants.py [--duration 4] [--repeats 2] [--concurrency 1 8 32] [--lm-seconds 8]
                                  [--parts kernels mlp lm]   # re-measure some, keep the others

Prints a table and writes benchmarks/results/variants.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workloads"), str(REPO / "operator"), str(REPO)]

import llm_serve  # noqa: E402 (benchmarks/ is on sys.path when run as a script)
import numpy as np  # noqa: E402
import serve_throughput  # noqa: E402
import torch  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "variants.json"
MLP_VARIANTS = ("int8", "fp16", "bf16", "onnx")
MLP_THREADS = "1"
LM_THREADS = 2
PARTS = ("kernels", "mlp", "lm")
LM_CONTENDERS = ("full", "full-bf16", "int8")
"""full-bf16: the full model served in bfloat16 (MAAS_DTYPE), the int8 variant's activation dtype,
to tell what the int8 weights bring from what bfloat16 arithmetic brings."""


# --- heavy MLP -------------------------------------------------------------------------------
def heavy_mlp_artifact(directory: pathlib.Path, epochs: int) -> dict[str, Any]:
    """Train the heavy MLP on synthetic:classification (64 features, 10 classes) and publish it
    with every variant through the trainer's export; returns the manifest as JSON."""
    from maas_operator.api.trainer import DatasetSpec, ModelOptions
    from maas_workloads import artifact
    from maas_workloads.train import datasets, models, publish
    from maas_workloads.variants.tensor import Validation

    data = datasets.load(DatasetSpec(uri="synthetic:classification?samples=20000&features=64&classes=10"))
    train, validation = data.split(0.2, 0)
    assert validation is not None
    torch.manual_seed(0)
    model = models.build("mlp", ModelOptions(hidden_size=2048, layers=4), train.features, train.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    for _ in range(epochs):
        for start in range(0, len(train.labels), 256):
            x, y = (
                torch.from_numpy(train.features[start : start + 256]),
                torch.from_numpy(train.labels[start : start + 256]),
            )
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    manifest, _ = publish.export(
        model.eval(),
        torch.from_numpy(train.features[:2]),
        directory,
        source=artifact.Source(name="heavy-mlp"),
        metrics={},
        variants=MLP_VARIANTS,
        validation=Validation(validation.features, validation.labels),
    )
    return dict(json.loads(manifest.to_json()))


def serve_mlp(directory: pathlib.Path, work: pathlib.Path, options: argparse.Namespace) -> dict[str, Any]:
    """Each contender's requests/s at each concurrency (median of the repeats, every run kept)."""
    body = work / "mlp-request.json"
    row = np.random.default_rng(0).normal(size=64).round(4).tolist()
    body.write_text(json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]}))
    processes: dict[str, tuple[Any, int]] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        for name in ("full", *MLP_VARIANTS):
            port = serve_throughput.free_port()
            command = [sys.executable, "-m", "maas_workloads.serve", "--model", str(directory)]
            command += ["--model-name", "mlp", "--port", str(port), "--host", "127.0.0.1"]
            command += ["--max-batch-size", "64"] + ([] if name == "full" else ["--variant", name])
            processes[name] = (
                serve_throughput.start(command, work / f"{name}.log", port, "/v2/models/mlp/ready"),
                port,
            )
        for concurrency in options.concurrency:
            for _ in range(options.repeats):
                for name, (_, port) in processes.items():
                    point = serve_throughput.run_load(port, "/v2/models/mlp/infer", body, concurrency, options.duration)
                    runs.setdefault(name, {}).setdefault(str(concurrency), []).append(point)
                    print("mlp", name, concurrency, round(point["throughput"], 1), flush=True)
    finally:
        for process, _ in processes.values():
            serve_throughput.stop(process)
    return {
        name: {c: {"median_rps": statistics.median(p["throughput"] for p in points), "runs": points}
               for c, points in by_c.items()}
        for name, by_c in runs.items()
    }  # fmt: skip


# --- causal LM -------------------------------------------------------------------------------
def lm_artifact(directory: pathlib.Path) -> dict[str, Any]:
    """llm_serve's ~85M Llama, published with its int8 variant measured on a generated corpus."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from maas_workloads.causal_lm import save_causal_lm
    from tests.workloads.llm import artifacts

    tok = artifacts.tokenizer(2048)
    config = LlamaConfig(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **artifacts.BENCHMARK,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    validation = [tok.encode(line) for line in artifacts.corpus(64, seed=1)]
    manifest, _ = save_causal_lm(model, tok, directory, variants=["int8"], validation=validation)
    return dict(json.loads(manifest.to_json()))


def serve_lm(directory: pathlib.Path, work: pathlib.Path, options: argparse.Namespace) -> dict[str, Any]:
    """Output tokens/s of the full model (as published, and in bfloat16) and the int8 variant at
    each concurrency, taking turns."""
    running: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    points: dict[str, dict[str, Any]] = {}
    try:
        for name in LM_CONTENDERS:
            port = serve_throughput.free_port()
            env = {
                **os.environ, "OMP_NUM_THREADS": str(LM_THREADS), "PYTHONPATH": f"{REPO / 'workloads'}:{REPO}",
                "MAAS_MODEL_URI": str(directory), "MAAS_MODEL_NAME": llm_serve.MODEL, "MAAS_HOST": "127.0.0.1",
                "MAAS_PORT": str(port), "MAAS_BLOCK_SIZE": str(llm_serve.BLOCK_SIZE),
                "MAAS_MAX_NUM_BATCHED_TOKENS": str(llm_serve.MAX_BATCH_TOKENS), "MAAS_MAX_NUM_SEQS": "32",
            }  # fmt: skip
            if name == "int8":
                env["MAAS_MODEL_VARIANT"] = "int8"
            elif name == "full-bf16":
                env["MAAS_DTYPE"] = "bfloat16"  # the full weights in the variant's activation dtype
            log = (work / f"lm-{name}.log").open("wb")
            process = subprocess.Popen([sys.executable, "-m", "maas_workloads.serve"], env=env, stdout=log, stderr=log)
            running[name] = (process, f"http://127.0.0.1:{port}")
        for process, url in running.values():
            llm_serve.wait_healthy(url, process, 900)
            asyncio.run(llm_serve.load(url, llm_serve.MODEL, 2, 3, options.output_tokens, llm_serve.Samples()))
        for concurrency in options.concurrency:
            samples = {name: llm_serve.Samples() for name in running}
            for _ in range(options.repeats):
                for name, (_, url) in running.items():
                    asyncio.run(
                        llm_serve.load(url, llm_serve.MODEL, concurrency, options.lm_seconds, options.output_tokens,
                                       samples[name])
                    )  # fmt: skip
            for name, sample in samples.items():
                points.setdefault(name, {})[str(concurrency)] = sample.summary()
                print("lm", name, concurrency, round(sample.summary()["tokens_per_second"], 1), flush=True)
    finally:
        for process, _ in running.values():
            serve_throughput.stop(process)
    return points


# --- kernels ---------------------------------------------------------------------------------
def _rate(function: Any, x: torch.Tensor, seconds: float = 1.0) -> float:
    with torch.inference_mode():
        for _ in range(3):
            function(x)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            function(x)
            count += 1
    return count / (time.perf_counter() - started)


def kernels() -> dict[str, Any]:
    """Calls per second, one torch thread: why fbgemm (torch.ao) for tensor int8 and PyTorch's
    weight-only kernel for LM int8, rather than torchao's own paths, on this CPU."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    from maas_workloads.variants.causal_lm import use_int8_kernels

    torch.set_num_threads(1)
    widths = [64, 2048, 2048, 2048, 2048, 10]
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    mlp = torch.nn.Sequential(*layers[:-1]).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fbgemm = torch.ao.quantization.quantize_dynamic(copy.deepcopy(mlp), {torch.nn.Linear}, dtype=torch.qint8)
    torchao_dynamic = copy.deepcopy(mlp)
    quantize_(torchao_dynamic, Int8DynamicActivationInt8WeightConfig())
    projection = torch.nn.Sequential(torch.nn.Linear(768, 2048)).eval()
    torchao_weight_only = copy.deepcopy(projection).to(torch.bfloat16)
    quantize_(torchao_weight_only, Int8WeightOnlyConfig())
    int8pack = copy.deepcopy(torchao_weight_only)
    use_int8_kernels(int8pack)
    result: dict[str, Any] = {"mlp_rows_per_second": {}, "lm_projection_rows_per_second": {}}
    for batch in (1, 8, 32):
        x = torch.randn(batch, 64)
        result["mlp_rows_per_second"][str(batch)] = {
            name: batch * _rate(model, x)
            for name, model in (("fp32", mlp), ("torch.ao dynamic int8 (fbgemm)", fbgemm),
                                ("torchao Int8DynamicActivationInt8Weight", torchao_dynamic))
        }  # fmt: skip
        y = torch.randn(batch, 768)
        result["lm_projection_rows_per_second"][str(batch)] = {
            name: batch * _rate(model, y)
            for name, model in (("fp32", projection), ("torchao Int8WeightOnly", torchao_weight_only),
                                ("aten._weight_int8pack_mm (ours)", int8pack))
        }  # fmt: skip
    return result


# --- report ----------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    mlp, lm = report["mlp"], report["lm"]
    concurrency = report["settings"]["mlp"]["concurrency"]
    lines = [
        "| model | variant | size MB | accuracy / perplexity | delta | " + " | ".join(
            f"c={c} req/s or tok/s (x full)" for c in concurrency) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(concurrency),
    ]  # fmt: skip
    manifest = mlp["manifest"]
    full_size = manifest["files"][manifest["modelFile"]]["size"] / 1e6  # model.pt, what the server loads
    for name in ("full", *MLP_VARIANTS):
        variant = manifest["variants"].get(name, {})
        size = full_size if name == "full" else variant["sizeBytes"] / 1e6
        metrics = manifest["metrics"] if name == "full" else variant["metrics"]
        delta = "" if name == "full" else f"{-metrics['val_accuracy_drop'] + 0.0:+.2f} pts"
        cells = []
        for c in concurrency:
            rate = mlp["serving"][name][str(c)]["median_rps"]
            ratio = rate / mlp["serving"]["full"][str(c)]["median_rps"]
            cells.append(f"{rate:.0f} ({ratio:.2f}x)")
        lines.append(
            f"| heavy MLP | {name} | {size:.1f} | {metrics['val_accuracy']:.4f} | {delta} | " + " | ".join(cells) + " |"
        )
    manifest = lm["manifest"]
    full_size = sum(e["size"] for p, e in manifest["files"].items() if p.endswith(".safetensors")) / 1e6
    for name in LM_CONTENDERS:
        variant = manifest["variants"].get(name, {})
        weights = variant["files"].items() if name == "int8" else manifest["files"].items()
        size = sum(e["size"] for p, e in weights if p.endswith(".safetensors")) / 1e6
        metrics = variant["metrics"] if name == "int8" else manifest["metrics"]
        delta = f"x{metrics['val_perplexity_ratio']:.4f}" if name == "int8" else ""
        cells = []
        for c in concurrency:
            rate = lm["serving"][name][str(c)]["tokens_per_second"]
            cells.append(f"{rate:.1f} ({rate / lm['serving']['full'][str(c)]['tokens_per_second']:.2f}x)")
        perplexity = f"{metrics['val_perplexity']:.1f}" if name != "full-bf16" else "(not measured)"
        row = f"| ~85M LM | {name} | {size:.1f} (weights) | {perplexity} | {delta} | "
        lines.append(row + " | ".join(cells) + " |")
    return "\n".join(lines)


def _settings(part: str, options: argparse.Namespace) -> dict[str, Any]:
    if part == "kernels":
        return {"threads": 1, "seconds_per_rate": 1.0}
    if part == "mlp":
        return {"duration": options.duration, "repeats": options.repeats, "concurrency": options.concurrency,
                "epochs": options.epochs, "threads": MLP_THREADS}  # fmt: skip
    return {"seconds": options.lm_seconds, "rounds": options.repeats, "concurrency": options.concurrency,
            "output_tokens": options.output_tokens, "threads": LM_THREADS}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per MLP load run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per contender and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of the heavy MLP")
    parser.add_argument("--lm-seconds", type=float, default=8.0, help="seconds per LM load run")
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS),
        help="measure these again; the others are kept from the last results file",
    )  # fmt: skip
    options = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="variants-bench-"))
    report: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for part in options.parts:
        print(f"{part} ...", flush=True)
        before = os.getloadavg()
        if part == "kernels":
            report[part] = kernels()
        elif part == "mlp":
            report[part] = {"manifest": heavy_mlp_artifact(work / "heavy-mlp", options.epochs)}
            report[part]["serving"] = serve_mlp(work / "heavy-mlp", work, options)
        else:
            report[part] = {"manifest": lm_artifact(work / "lm")}
            report[part]["serving"] = serve_lm(work / "lm", work, options)
        report.setdefault("settings", {})[part] = _settings(part, options)
        report.setdefault("machine", {})[part] = {
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_before": before, "loadavg_after": os.getloadavg(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


if __name__ == "__main__":
    main()
