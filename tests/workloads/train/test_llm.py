"""Causal-LM fine-tuning on real local Ray clusters, through the real launcher (head and workers as processes).

One trained run is shared by many assertions: a tiny model trained from scratch with FSDP on two
workers (a Ray Train worker killed mid-run, then the attempt ended by the platform and resumed
on one worker) becomes the base model of a LoRA fine-tune on two FSDP workers, whose loss a
one-worker run matches.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from maas_workloads import artifact, contract, storage
from maas_workloads.train.checkpoints import CheckpointStore
from maas_workloads.train.llm import encoding, records, synthetic
from maas_workloads.train.llm.loop import evaluate
from tests.workloads.train.cluster import LocalJob, spec

# The shared runs start several Ray clusters: their setup outlasts the default per-test timeout on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SEQUENCE_LENGTH = 64


def write_chat(path: pathlib.Path, samples: int, seed: int, largest: int = 99) -> pathlib.Path:
    options = synthetic.ArithmeticOptions(samples=samples, seed=seed, max=largest)
    path.write_text("".join(json.dumps(record) + "\n" for record in synthetic.conversations(options)))
    return path


def lm_spec(causal_lm: dict[str, Any], dataset: dict[str, Any], **hyperparameters: Any) -> dict[str, Any]:
    hp = {"batchSize": 8, "learningRate": 0.003, "optimizer": "adamw", **hyperparameters}
    trainer = {"causalLM": {"sequenceLength": SEQUENCE_LENGTH, **causal_lm}, "dataset": dataset, "hyperparameters": hp}
    return spec(trainer=trainer)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, job: LocalJob) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert job.head is not None
        if job.head.poll() is not None:
            raise AssertionError(
                f"the head exited with {job.head.returncode} waiting for {what}:\n{job.log('head')[-3000:]}"
            )
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{job.log('head')[-3000:]}")


@dataclass
class ScratchRun:
    """The tiny model trained from scratch: two attempts, the artifact, what was seen on the way."""

    root: pathlib.Path
    first: LocalJob
    second: LocalJob
    first_loss: float
    killed_at_step: int
    ended_at_step: int
    """The step of the newest checkpoint seen before attempt 1 was terminated."""
    progress: dict[str, Any]
    left_at_step: int
    """The newest checkpoint when attempt 1 was over, and its files."""
    left_files: list[str]
    worker_niceness: list[int]
    """Of the Ray Train workers of attempt 1."""

    @property
    def output(self) -> pathlib.Path:
        return self.root / "out" / "tiny"


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScratchRun]:
    """FSDP on 2 workers from scratch on streamed chat JSONL: a Ray Train worker is killed after the first
    checkpoint, the head is terminated (a platform failure) after a later one, and attempt 2 resumes
    the 2-worker sharded checkpoint on 1 worker (minReplicas 1) and publishes the model."""
    root = tmp_path_factory.mktemp("scratch")
    data = write_chat(root / "train.jsonl", 3000, seed=1)
    validation = write_chat(root / "validation.jsonl", 64, seed=2)
    job_spec = lm_spec(
        {"architecture": {"modelType": "llama", "size": "tiny"}, "parallelism": "fsdp"},
        {"uri": data.as_uri(), "validationUri": validation.as_uri(), "streaming": True},
        maxSteps=60,
        warmupSteps=5,
        evalEverySteps=20,
    )
    job_spec["workers"]["minReplicas"] = 1
    job_spec["checkpoint"] = {"uri": "file:///unused", "everySteps": 10, "keep": 2}
    locations = {"output_uri": (root / "out" / "tiny").as_uri(), "checkpoint_uri": (root / "checkpoints").as_uri()}
    first = LocalJob(root / "attempt-1", job_spec, attempt=1, **locations).start()
    second = LocalJob(root / "attempt-2", job_spec, attempt=2, workers=1, **locations)
    try:
        early = wait_for(lambda: (p := first.progress()) and "loss" in p["metrics"] and p, 300, "the first step", first)
        first_loss = early["metrics"]["loss"]
        progress = wait_for(
            lambda: (p := first.progress()) and p.get("lastCheckpoint") and p, 300, "a checkpoint", first
        )
        workers = wait_for(first.train_worker_processes, 30, "the Ray Train workers", first)
        niceness = [worker.nice() for worker in workers]
        workers[0].send_signal(signal.SIGKILL)
        killed_at = progress["step"]
        # A checkpoint newer than the one seen before the kill comes from the restored worker group.
        later = wait_for(
            lambda: (p := first.progress()) and p.get("lastCheckpoint") not in (None, progress["lastCheckpoint"]) and p,
            300,
            "a checkpoint after the restart",
            first,
        )
        assert first.head is not None
        first.head.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == contract.SIGNAL_EXIT_BASE + signal.SIGTERM, (later, first.log("head")[-3000:])
        first.stop()  # as the operator does: attempt 2 starts once every pod of attempt 1 is gone
        store = CheckpointStore(storage.open_location(locations["checkpoint_uri"]), keep=2, job_uid="uid-1")
        newest = store.latest()
        assert newest is not None
        shards = sorted(p.name for p in (root / "checkpoints" / newest.directory).iterdir())
        second.start()
        assert second.wait(timeout=600) == contract.ExitCode.SUCCESS, second.log("head")[-4000:]
        checkpointed = int(re.search(r"checkpoint-(\d+)", later["lastCheckpoint"]).group(1))  # type: ignore[union-attr]
        yield ScratchRun(root, first, second, first_loss, killed_at, checkpointed, later, newest.step, shards, niceness)
    finally:
        first.stop()
        second.stop()


def test_fsdp_from_scratch_learns_and_reports_perplexity(scratch_run: ScratchRun) -> None:
    model = scratch_run.second.termination_message()["model"]
    metrics = model["metrics"]
    assert metrics["loss"] < scratch_run.first_loss * 0.6, (scratch_run.first_loss, metrics)
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    progress = scratch_run.progress["metrics"]
    assert progress["tokens_per_second"] > 0 and "val_perplexity" in progress and "learning_rate" in progress
    assert scratch_run.progress["totalSteps"] == 60


def test_training_workers_do_not_yield_the_cpu(scratch_run: ScratchRun) -> None:
    """Ray's default worker niceness (15) is overridden on worker pods (launch.WORKER_NICENESS_ENV)."""
    assert scratch_run.worker_niceness == [0, 0]


def test_a_killed_worker_resumes_from_the_sharded_checkpoint(scratch_run: ScratchRun) -> None:
    log = scratch_run.first.log("head")
    step = int(re.search(r"resuming from \S+checkpoint-(\d+) \(epoch \d+, step (\d+)\)", log).group(2))  # type: ignore[union-attr]
    assert 10 <= step <= scratch_run.killed_at_step + 10


def test_attempt_two_resumes_a_two_worker_checkpoint_on_one_worker(scratch_run: ScratchRun) -> None:
    log = scratch_run.second.log("head")
    assert "world_size=1" in log and "world_size=2" not in log
    resumed = re.search(r"resuming from \S+checkpoint-(\d+) \(epoch \d+, step (\d+)\)", log)
    assert resumed is not None and int(resumed.group(2)) == scratch_run.left_at_step >= scratch_run.ended_at_step
    # Sharded by the two workers of attempt 1, read by the one of attempt 2.
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(scratch_run.left_files)


def test_the_artifact_is_a_hugging_face_model_with_its_chat_template(scratch_run: ScratchRun) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = scratch_run.second.termination_message()["model"]
    assert model["uri"] == scratch_run.output.as_uri()
    manifest = artifact.verify(scratch_run.output, expected_sha256=model["sha256"])
    assert isinstance(manifest, artifact.CausalLMManifest)
    assert (manifest.architecture, manifest.context_length, manifest.source.attempt) == ("llama", 512, 2)
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(manifest.files)
    tokenizer = AutoTokenizer.from_pretrained(scratch_run.output)
    loaded = AutoModelForCausalLM.from_pretrained(scratch_run.output)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    # Generation stops at the end of the assistant's turn, as training taught the model to.
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in loaded.generation_config.eos_token_id
    output = loaded.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]


# --- LoRA on the model above ------------------------------------------------------------------------


@dataclass
class LoraRuns:
    root: pathlib.Path
    two_workers: LocalJob
    one_worker: LocalJob
    base_sha256: str
    base_val_loss: float
    """The base model's loss on the same validation data, as the trainer computes it."""


def validation_blocks(model_dir: pathlib.Path, data: pathlib.Path) -> encoding.TokenBlocks:
    """The validation data as the trainer encodes it: packed blocks, only the assistant's tokens scored."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = encoding.Encoder(tokenizer, "chat", "assistant")
    source = records.open_source(data.as_uri(), "validation", "chat")
    return encoding.blocks(encoder, records.read(source), SEQUENCE_LENGTH, True, encoding.pad_token_id(tokenizer))


def validation_loss(model_dir: pathlib.Path, data: pathlib.Path) -> float:
    """A model's validation loss, computed as the trainer does (packed blocks, mean over trainable tokens)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    blocks = validation_blocks(model_dir, data)
    return float(evaluate(model, blocks, 4, torch.device("cpu"), contextlib.nullcontext)["val_loss"])


MAX_PERPLEXITY_RATIO = 1.05
"""The two-worker LoRA run's output.maxAccuracyDrop: the issue's goal for weight-only int8 (at most 5%
more perplexity), which per-row int8 weights of a trained model meet with room to spare."""


@pytest.fixture(scope="module")
def lora_runs(scratch_run: ScratchRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoraRuns]:
    """LoRA on the published tiny model, on sums of three-digit numbers it never saw: FSDP on 2 workers
    (batch 4 each); 1 worker accumulating two micro-batches of 4, with gradient checkpointing: the
    same global batches, so the same training. Plain SGD, whose updates (unlike Adam's) scale with
    the gradients, so a mis-scaled gradient shows. (DDP against FSDP: test_llm_parallel.py, without
    a Ray cluster per run.)"""
    root = tmp_path_factory.mktemp("lora")
    data = write_chat(root / "train.jsonl", 400, seed=3, largest=999)
    validation = write_chat(root / "validation.jsonl", 32, seed=4, largest=999)
    base_sha256 = scratch_run.second.termination_message()["model"]["sha256"]
    causal_lm = {
        "baseModel": {"uri": scratch_run.output.as_uri(), "sha256": base_sha256},
        "method": "lora",
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj", "down_proj"]},
        "parallelism": "fsdp",
    }
    dataset = {"uri": data.as_uri(), "validationUri": validation.as_uri()}
    hyperparameters = {"batchSize": 4, "maxSteps": 8, "optimizer": "sgd", "learningRate": 0.2, "lrSchedule": "constant"}
    two = lm_spec(causal_lm, dataset, **hyperparameters)
    one = lm_spec(causal_lm, dataset, **hyperparameters)
    two["output"].update(variants=["int8"], maxAccuracyDrop=MAX_PERPLEXITY_RATIO)
    one["trainer"]["hyperparameters"]["gradientAccumulationSteps"] = 2
    one["trainer"]["causalLM"]["gradientCheckpointing"] = True
    one["workers"]["replicas"] = 1
    jobs = [
        LocalJob(root / name, job, output_uri=(root / f"{name}-out" / "model").as_uri())
        for name, job in (("two", two), ("one", one))
    ]
    try:
        for job in jobs:
            assert job.start().wait(timeout=600) == contract.ExitCode.SUCCESS, job.log("head")[-4000:]
        yield LoraRuns(root, *jobs, base_sha256, validation_loss(scratch_run.output, validation))
    finally:
        for job in jobs:
            job.stop()


def test_lora_with_fsdp_publishes_the_merged_model_and_the_adapter(lora_runs: LoraRuns) -> None:
    model = lora_runs.two_workers.termination_message()["model"]
    assert model["metrics"]["val_loss"] < lora_runs.base_val_loss * 0.95, (lora_runs.base_val_loss, model["metrics"])
    merged_dir = lora_runs.root / "two-out" / "model"
    merged = artifact.verify(merged_dir, expected_sha256=model["sha256"])
    assert isinstance(merged, artifact.CausalLMManifest)
    assert not any(name.startswith("adapter/") for name in merged.files)
    adapter = artifact.verify(merged_dir / "adapter", expected_sha256=model["adapter"]["sha256"])
    assert model["adapter"]["uri"] == f"{merged_dir.as_uri()}/adapter"
    assert isinstance(adapter, artifact.AdapterManifest)
    assert adapter.base_model.sha256 == lora_runs.base_sha256 and adapter.rank == 8
    assert set(adapter.target_modules) == {"q_proj", "v_proj", "down_proj"}
    # The adapter changed the weights it targets, and only those.
    from safetensors.torch import load_file

    tuned = load_file(merged_dir / "model.safetensors")
    base = load_file(pathlib.Path(adapter.base_model.uri.removeprefix("file://")) / "model.safetensors")
    changed = {name for name in base if not base[name].equal(tuned[name])}
    assert changed and all(name.split(".")[-2] in ("q_proj", "v_proj", "down_proj") for name in changed)


def test_the_merged_model_is_published_with_its_int8_variant_and_the_status_says_so(lora_runs: LoraRuns) -> None:
    """output.variants [int8] of a LoRA run: the variant is of the merged model (the one served), its
    perplexity on the job's validation data (recomputed here, through the engine's loader) next to
    the full model's, and the head's report carries it into status.model.variants."""
    from maas_workloads.variants import causal_lm as lm_variant
    from tests.operator.test_trainingjob_status import HEAD, W0, plan, pod, running_status

    two = lora_runs.two_workers
    model = two.termination_message()["model"]
    merged_dir = lora_runs.root / "two-out" / "model"
    manifest = artifact.verify(merged_dir, expected_sha256=model["sha256"], variant="int8")
    assert isinstance(manifest, artifact.CausalLMManifest)
    variant = manifest.variants["int8"]
    assert variant.directory == "variants/int8" and variant.datatypes == ["INT8", "BF16"]
    for relative, entry in variant.files.items():
        assert artifact.sha256_file(merged_dir / relative) == entry.sha256
    blocks = validation_blocks(merged_dir, lora_runs.root / "validation.jsonl")
    sequences = [row[:n].tolist() for row, n in zip(blocks.input_ids, blocks.lengths, strict=True)]
    labels = [row[:n].tolist() for row, n in zip(blocks.labels, blocks.lengths, strict=True)]
    full = lm_variant.perplexity(lm_variant.load(merged_dir, torch.float32), sequences, labels)
    int8 = lm_variant.perplexity(lm_variant.load(merged_dir / variant.directory), sequences, labels)
    assert manifest.metrics["val_perplexity"] == pytest.approx(full, rel=1e-6)
    assert variant.metrics["val_perplexity"] == pytest.approx(int8, rel=1e-6)
    assert variant.metrics["val_perplexity_ratio"] == pytest.approx(int8 / full, rel=1e-5)
    assert variant.metrics["val_perplexity_ratio"] <= MAX_PERPLEXITY_RATIO
    # The same tokens as the trainer's validation loss, on the merged weights instead of the adapted ones
    # (they agreed to 4e-8 relative in a run).
    assert full == pytest.approx(math.exp(model["metrics"]["val_loss"]), rel=1e-4)
    reported = {"name": "int8", "published": True, "message": variant.summary, "metrics": variant.metrics}
    assert model["variants"] == [reported]
    head = pod(HEAD, "Succeeded", exit_code=0, message=(two.workdir / "head.termination-log").read_text())
    status = plan(running_status(), [head, pod(W0)]).status
    assert status.model is not None and [v.model_dump() for v in status.model.variants] == [reported]


def test_two_fsdp_workers_match_one_worker(lora_runs: LoraRuns) -> None:
    """The same global batches on 2 FSDP workers and on 1 worker accumulating 2 micro-batches (and
    recomputing activations).

    Tolerance 1e-4 relative: the runs add the same numbers in a different order (gloo's all-reduce
    and reduce-scatter against local accumulation), which moved the losses by about 1e-7 relative
    in these 8 steps; a wrong split is far outside it: halving the gradients (what averaging them
    once too often does) moves the final validation loss by 10% on the same data (measured in one
    process), and different data per step changes the loss from the first step on.
    """
    two = lora_runs.two_workers.termination_message()["model"]["metrics"]
    one = lora_runs.one_worker.termination_message()["model"]["metrics"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)


def test_the_fine_tuned_model_is_served_over_the_openai_api(lora_runs: LoraRuns) -> None:
    """What status.model names, through the fetch-and-verify init container and the built-in engine,
    exactly as the operator renders a ModelService for it, asked with the official client."""
    import openai

    from tests.workloads.llm.conftest import MODEL, TOKEN, local_env, operator_pod, run_fetch
    from tests.workloads.serve.conftest import Server

    merged = lora_runs.root / "two-out" / "model"
    pod = operator_pod(merged, "builtin")
    cache = lora_runs.root / "model-cache"
    run_fetch(pod, cache)
    env = local_env(pod["containers"][0], cache)
    env = {k: v for k, v in env.items() if k.startswith("MAAS_") and k not in (contract.ENV_PORT, contract.ENV_HOST)}
    server = Server(env.pop(contract.ENV_MODEL_URI), lora_runs.root / "server.log", env)
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is 512 + 7?"}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        chunks = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        assert "".join(chunks).strip(), chunks
    finally:
        server.stop()
