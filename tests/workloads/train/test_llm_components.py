"""The causal-LM trainer's parts, without Ray: data, tokenizer, encoding, batches, sharded checkpoints."""

from __future__ import annotations

import copy
import itertools
import json
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import torch

from maas_operator.api.trainer import Hyperparameters
from maas_workloads import storage
from maas_workloads.train.checkpoints import CheckpointStore
from maas_workloads.train.errors import ConfigurationError
from maas_workloads.train.llm import encoding, records, synthetic
from maas_workloads.train.llm.batches import Batches
from maas_workloads.train.llm.state import Position
from maas_workloads.train.llm.tokenizer import TURN_END, train_tokenizer
from tests.workloads.train.cluster import REPO

FIELD = "spec.trainer.dataset.uri"


def write_jsonl(path: pathlib.Path, rows: list[Any]) -> pathlib.Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    conversations = synthetic.conversations(synthetic.ArithmeticOptions(samples=300))
    texts = [m["content"] for c in conversations for m in c["messages"]] + ["user", "assistant"]
    return train_tokenizer(texts, 400, tmp_path_factory.mktemp("tokenizer"))


# --- Synthetic data -------------------------------------------------------------------------


def test_arithmetic_never_contains_a_held_out_pair() -> None:
    options = synthetic.ArithmeticOptions.parse("synthetic:arithmetic?samples=2000&seed=3")
    questions = {c["messages"][0]["content"] for c in synthetic.conversations(options)}
    answers = [c["messages"][1]["content"] for c in synthetic.conversations(options)]
    assert len(answers) == 2000 and answers == [c["messages"][1]["content"] for c in synthetic.conversations(options)]
    for answer in answers:
        a, b = (int(x) for x in answer.split("so ")[1].split(" = ")[0].split(" + "))
        assert not synthetic.is_held_out(a, b) and 0 <= a <= 99 and 0 <= b <= 9
    question, expected = synthetic.held_out_question(options)
    assert question not in questions and expected.endswith(
        question.removeprefix("What is ").rstrip("?") + " = " + expected.split(" = ")[-1]
    )


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("synthetic:arithmetic?rows=5", "unknown option 'rows'"),
        ("synthetic:arithmetic?samples=0", "samples='0' must be a whole number from 1"),
        ("synthetic:algebra", "unknown generator"),
    ],
)
def test_arithmetic_options_are_checked(uri: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        records.open_source(uri, FIELD, None)


# --- Records --------------------------------------------------------------------------------


def test_the_format_follows_the_files(tmp_path: pathlib.Path) -> None:
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "assistant", "content": "hi"}]}])
    (tmp_path / "text").mkdir()
    write_jsonl(tmp_path / "text" / "a.jsonl", [{"text": "one"}])
    write_jsonl(tmp_path / "text" / "b.jsonl", [{"text": "two"}])
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "book.txt").write_text("first line\n\nsecond line\n")
    assert records.open_source(chat.as_uri(), FIELD, None).format == "chat"
    directory = records.open_source((tmp_path / "text").as_uri(), FIELD, "text")
    assert directory.keys == ("a.jsonl", "b.jsonl")
    assert [record for _, record in records.read(directory)] == [{"text": "one"}, {"text": "two"}]
    plain = records.open_source((tmp_path / "plain").as_uri(), FIELD, None)
    assert plain.format == "plain"
    assert [r["text"] for _, r in records.read(plain)] == ["first line\n", "second line\n"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "no messages here"}, r"line 2: chat data needs a non-empty `messages` list .* has keys text"),
        ({"messages": [{"role": "robot", "content": "x"}]}, r"line 2: messages\[0\].role must be one of"),
        ({"messages": [{"role": "user", "content": "x"}]}, "line 2: a conversation needs an assistant message"),
    ],
)
def test_chat_records_that_do_not_fit_are_named(tmp_path: pathlib.Path, row: dict[str, Any], message: str) -> None:
    good = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [good, row])
    source = records.open_source(path.as_uri(), FIELD, "chat")
    with pytest.raises(ConfigurationError, match=f"{FIELD}: .*chat.jsonl {message}"):
        list(records.read(source))


def test_jsonl_without_text_or_messages_is_refused(tmp_path: pathlib.Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(ConfigurationError, match="need a `text` string or a `messages` list; this one has keys"):
        records.open_source(path.as_uri(), FIELD, None)
    with pytest.raises(ConfigurationError, match="neither a file nor a directory"):
        records.open_source((tmp_path / "missing.jsonl").as_uri(), FIELD, None)


# --- Tokenizer and encoding -----------------------------------------------------------------


def test_the_tokenizer_is_deterministic_and_keeps_digits_apart(tokenizer: Any, tmp_path: pathlib.Path) -> None:
    conversations = synthetic.conversations(synthetic.ArithmeticOptions(samples=300))
    texts = [m["content"] for c in conversations for m in c["messages"]] + ["user", "assistant"]
    again = train_tokenizer(texts, 400, tmp_path)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert [t for t in tokenizer.tokenize("1234") if t.strip("Ġ")] == ["1", "2", "3", "4"]


def test_chat_loss_covers_only_the_assistant_turn_and_its_end(tokenizer: Any) -> None:
    messages = synthetic.conversation(47, 8)
    ids, labels = encoding.Encoder(tokenizer, "chat", "assistant").encode({"messages": messages})
    learned = [token for token, label in zip(ids, labels, strict=True) if label != encoding.IGNORE_INDEX]
    assert tokenizer.decode(learned) == f"7 + 8 = 15, so 47 + 8 = 55{TURN_END}\n"
    assert encoding.Encoder(tokenizer, "chat", "all").encode({"messages": messages}) == (ids, ids)


def test_packing_and_padding(tokenizer: Any) -> None:
    encoder = encoding.Encoder(tokenizer, "text", "all")
    examples = [encoder.encode({"text": text}) for text in ("12 + 3 = 15", "4 + 4 = 8", "99 + 9 = 108")]
    total = sum(len(ids) for ids, _ in examples)
    packed = encoding.pack(examples, 8)
    assert packed.input_ids.shape == (total // 8, 8) and (packed.lengths == 8).all()
    assert examples[0][0][-1] == tokenizer.eos_token_id  # text records end their document
    padded = encoding.pad(examples, 8, 0)
    assert padded.lengths.tolist() == [min(len(ids), 8) for ids, _ in examples]
    short = int(padded.lengths.min())
    row = int(padded.lengths.argmin())
    assert (padded.labels[row, short:] == encoding.IGNORE_INDEX).all() and (padded.input_ids[row, short:] == 0).all()


def test_streamed_plain_text_is_encoded_as_when_loaded(tokenizer: Any, tmp_path: pathlib.Path) -> None:
    """Ray Data's read_text drops line breaks and keeps blank lines; the streamed blocks are still
    the ones the head would have made from the file."""
    book = tmp_path / "book.txt"
    book.write_text("12 + 3 = 15\n\n4 + 4 = 8\n   \n99 + 9 = 108\n7 + 1 = 8\n")
    loaded = encoding.blocks(
        encoding.Encoder(tokenizer, "plain", "all"),
        records.read(records.open_source(book.as_uri(), FIELD, None)),
        4,
        True,
        0,
    )
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    files = {path.name: path.read_bytes() for path in (tmp_path / "tokenizer").iterdir()}
    lines = np.array(book.read_text().splitlines(), dtype=object)  # what read_text's batches hold
    streamed = encoding.BatchEncoder(files, "plain", "all", 4, True)({"text": lines})
    assert len(loaded) > 2 and (streamed["input_ids"] == loaded.input_ids).all()
    assert (streamed["labels"] == loaded.labels).all()


def test_a_chat_template_that_rewrites_earlier_turns_is_refused(tokenizer: Any) -> None:
    tokenizer = copy.deepcopy(tokenizer)
    # Renders the last message differently from the others: prefixes no longer line up.
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}"
    with pytest.raises(ConfigurationError, match=r"set causalLM\.lossOn: all"):
        encoding.Encoder(tokenizer, "chat", "assistant").encode({"messages": synthetic.conversation(1, 2)}, "line 7")


# --- Batches ----------------------------------------------------------------------------------


def _blocks(count: int) -> encoding.TokenBlocks:
    ids = np.arange(count, dtype=np.int32).reshape(count, 1).repeat(4, axis=1)
    return encoding.TokenBlocks(ids, ids.copy(), np.full(count, 4, dtype=np.int32))


def _global_batches(world: int, accumulation: int, position: Position, blocks: encoding.TokenBlocks) -> list[set[int]]:
    hp = Hyperparameters(batch_size=2, epochs=2)
    steps: list[set[int]] = []
    per_rank = [
        list(Batches(blocks, None, hp, rank, world, accumulation, torch.device("cpu")).epoch(position))
        for rank in range(world)
    ]
    for step in zip(*per_rank, strict=True):
        steps.append({int(row[0]) for micro in step for batch in micro for row in batch["input_ids"]})
    return steps


def test_a_global_batch_is_the_same_however_it_is_split() -> None:
    blocks = _blocks(37)
    two_workers = _global_batches(2, 1, Position(), blocks)
    one_accumulating = _global_batches(1, 2, Position(), blocks)
    assert two_workers == one_accumulating and len(two_workers) == 37 // 4
    assert all(len(step) == 4 for step in two_workers)
    # Resumed on one worker after three steps on two: the same sequences follow.
    assert _global_batches(1, 2, Position(step=3, offset=12), blocks) == two_workers[3:]


def test_total_steps_follow_epochs_resizes_and_max_steps() -> None:
    cpu = torch.device("cpu")
    batches = Batches(_blocks(40), None, Hyperparameters(batch_size=2, epochs=3), 0, 2, 1, cpu)
    assert batches.total_steps(Position()) == 30
    resized = Batches(_blocks(40), None, Hyperparameters(batch_size=2, epochs=3), 0, 1, 1, cpu)
    assert resized.total_steps(Position(step=5, epoch=0, offset=20)) == 5 + 10 + 2 * 20
    capped = Batches(_blocks(40), None, Hyperparameters(batch_size=2, epochs=3, max_steps=7), 0, 2, 1, cpu)
    assert capped.total_steps(Position()) == 7


@pytest.mark.parametrize(
    ("schedule", "at_end"),
    [("constant", 0.1), ("linear", 0.0), ("cosine", 0.0)],
)
def test_the_learning_rate_warms_up_then_follows_its_schedule(schedule: str, at_end: float) -> None:
    from maas_workloads.train.llm.loop import build_scheduler

    hp = Hyperparameters(learning_rate=0.1, warmup_steps=4, lr_schedule=schedule)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=hp.learning_rate)
    scheduler = build_scheduler(hp, optimizer, total_steps=12)
    rates = []
    for _ in range(12):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert scheduler.get_last_lr()[0] == pytest.approx(at_end, abs=1e-9)
    if schedule == "constant":
        assert rates[4:] == pytest.approx([0.1] * 8)
    else:  # decays from the peak, step by step, to zero at the last step
        assert all(later < earlier for earlier, later in itertools.pairwise(rates[4:]))


# --- Sharded checkpoints ----------------------------------------------------------------------


def test_a_sharded_checkpoint_is_committed_by_its_marker(tmp_path: pathlib.Path) -> None:
    store = CheckpointStore(storage.LocalLocation(tmp_path / "store"), keep=1, job_uid="uid")
    for rank in (0, 1):
        part = tmp_path / f"rank-{rank}"
        part.mkdir()
        (part / f"__{rank}_0.distcp").write_bytes(b"shard")
        store.upload_part(part, step=10)
    assert store.latest() is None  # every part is in, but nothing is committed yet
    info = store.commit(step=10, epoch=1, attempt=1, metrics={"loss": 1.0})
    assert store.latest() == info
    assert sorted(storage.LocalLocation(tmp_path / "store").list_keys()) == [
        "checkpoint-000000000010/__0_0.distcp",
        "checkpoint-000000000010/__1_0.distcp",
        "checkpoint-000000000010/checkpoint.json",
    ]
    store.upload_part(tmp_path / "rank-0", step=20)  # an interrupted save of a later step
    store.clear(20)
    assert store.latest() == info and not (tmp_path / "store" / "checkpoint-000000000020").exists()


# --- Models -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_each_architecture_builds_and_shards_by_decoder_layer(tokenizer: Any, model_type: str) -> None:
    from transformers import AutoModelForCausalLM

    from maas_operator.api.causallm import ArchitectureSpec
    from maas_workloads.train.llm.modeling import decoder_layers, scratch_config

    config = scratch_config(ArchitectureSpec(model_type=model_type, size="tiny"), tokenizer)  # type: ignore[arg-type]
    assert (config.model_type, config.max_position_embeddings, config.vocab_size) == (model_type, 512, len(tokenizer))
    model = AutoModelForCausalLM.from_config(config)
    assert len(decoder_layers(model)) == config.num_hidden_layers == 2
    ids, _ = encoding.Encoder(tokenizer, "chat", "all").encode({"messages": synthetic.conversation(3, 4)})
    batch = torch.tensor([ids])
    assert model(input_ids=batch, labels=batch).loss.isfinite()


@pytest.mark.parametrize("tied", [True, False])
def test_fsdp_shards_untied_embeddings_and_head_as_units_of_their_own(tokenizer: Any, tied: bool) -> None:
    from transformers import AutoModelForCausalLM

    from maas_operator.api.causallm import ArchitectureSpec
    from maas_workloads.train.llm.modeling import decoder_layers, scratch_config, shard_units

    config = scratch_config(ArchitectureSpec(model_type="llama", size="tiny"), tokenizer)  # type: ignore[arg-type]
    config.tie_word_embeddings = tied
    model = AutoModelForCausalLM.from_config(config)
    units = shard_units(model)
    layers = [(layer, True) for layer in decoder_layers(model)]
    if tied:
        # One parameter used in two places stays with the root, which covers both uses.
        assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
        assert units == layers
    else:
        assert units == [(model.get_input_embeddings(), True), *layers, (model.get_output_embeddings(), False)]


FREED_WHILE_TRAINING = textwrap.dedent(
    """
    import torch
    from maas_workloads.train.llm.modeling import memory_returned_when_freed

    def resident() -> int:
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    with memory_returned_when_freed():
        pass  # loading and sharding happen here; training follows
    gradients, state = [], []
    for _ in range(40):
        gradients.append(torch.ones(2 * 2**20))  # 8 MiB, allocated anew every step
        state.append(torch.ones(16 * 2**10))  # 64 KiB, long-lived, between them on the heap
    before = resident()
    gradients.clear()
    print(before - resident())
    """
)


@pytest.mark.slow
def test_parameter_sized_blocks_freed_while_training_go_back_to_the_os() -> None:
    """8 MiB blocks between long-lived small ones: served by mmap, all 320 MiB leave the resident set
    when freed. From the heap (glibc's threshold at 32 MiB, as before) none did: freed, they stayed
    resident in holes between the small blocks. In its own process: the threshold is process-wide."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("workloads", "operator", "."))}
    command = [sys.executable, "-c", FREED_WHILE_TRAINING]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) >= 300 * 2**20


# --- Base models from storage -------------------------------------------------------------------


def test_a_base_model_on_s3_is_checked_from_its_metadata_and_fetched_verified(
    tokenizer: Any, tmp_path: pathlib.Path, bucket: str
) -> None:
    from transformers import AutoModelForCausalLM

    from maas_operator.api.causallm import ArchitectureSpec, BaseModelSpec
    from maas_workloads.causal_lm import save_causal_lm
    from maas_workloads.train.llm import base
    from maas_workloads.train.llm.modeling import scratch_config

    model = AutoModelForCausalLM.from_config(scratch_config(ArchitectureSpec(), tokenizer))
    _, digest = save_causal_lm(model, tokenizer, tmp_path / "artifact")
    storage.open_location(f"s3://{bucket}").publish_directory(tmp_path / "artifact", "base", "manifest.json")
    uri = f"s3://{bucket}/base"

    metadata = base.fetch_metadata(BaseModelSpec(uri=uri, sha256=digest), tmp_path / "metadata")
    assert metadata.manifest_sha256 == digest
    assert (metadata.directory / "config.json").is_file() and (metadata.directory / "tokenizer.json").is_file()
    assert not (metadata.directory / "model.safetensors").exists()  # the head never downloads the weights

    with pytest.raises(ConfigurationError, match=r"baseModel\.sha256: .* not the pinned"):
        base.fetch_metadata(BaseModelSpec(uri=uri, sha256="0" * 64), tmp_path / "pinned")
    with pytest.raises(ConfigurationError, match=r"has no manifest\.json: an s3:// or https:// base model"):
        base.fetch_metadata(BaseModelSpec(uri=f"s3://{bucket}/nothing"), tmp_path / "nothing")

    fetched = base.fetch(BaseModelSpec(uri=uri, sha256=digest), tmp_path / "cache")
    assert fetched.manifest_sha256 == digest and (fetched.directory / "model.safetensors").is_file()


def test_a_base_model_over_https_is_checked_from_its_metadata_and_fetched_verified(
    tokenizer: Any, tmp_path: pathlib.Path
) -> None:
    """The same reader for an https:// base, served here over plain HTTP by a real server (the spec's
    pattern admits https:// only, so the spec is built without its validation)."""
    import functools
    import http.server
    import threading

    from transformers import AutoModelForCausalLM

    from maas_operator.api.causallm import ArchitectureSpec, BaseModelSpec
    from maas_workloads.causal_lm import save_causal_lm
    from maas_workloads.train.llm import base
    from maas_workloads.train.llm.modeling import scratch_config

    model = AutoModelForCausalLM.from_config(scratch_config(ArchitectureSpec(), tokenizer))
    _, digest = save_causal_lm(model, tokenizer, tmp_path / "site" / "base")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        root = f"http://127.0.0.1:{server.server_address[1]}"
        metadata = base.fetch_metadata(BaseModelSpec.model_construct(uri=f"{root}/base", sha256=digest), tmp_path / "m")
        assert metadata.manifest_sha256 == digest and (metadata.directory / "tokenizer.json").is_file()
        assert not (metadata.directory / "model.safetensors").exists()
        with pytest.raises(ConfigurationError, match=r"baseModel\.sha256: .* not the pinned"):
            base.fetch_metadata(BaseModelSpec.model_construct(uri=f"{root}/base", sha256="0" * 64), tmp_path / "p")
        with pytest.raises(ConfigurationError, match=r"has no manifest\.json: an s3:// or https:// base model"):
            base.fetch_metadata(BaseModelSpec.model_construct(uri=f"{root}/nothing", sha256=None), tmp_path / "n")
        fetched = base.fetch(BaseModelSpec.model_construct(uri=f"{root}/base", sha256=digest), tmp_path / "cache")
        assert fetched.manifest_sha256 == digest and (fetched.directory / "model.safetensors").is_file()
    finally:
        server.shutdown()
        server.server_close()
