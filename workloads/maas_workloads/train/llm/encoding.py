"""Records to token sequences: tokenize (chat through the tokenizer's chat template), mask what the
loss ignores, and pack or pad into fixed-length blocks.

Labels use -100 (IGNORE_INDEX) for tokens the loss skips, as transformers' causal-LM loss does:
padding, and with `lossOn: assistant` everything but the assistant's turns (their end-of-turn
token included, so the model learns to stop).
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from maas_operator.api.trainer import DatasetFormat
from maas_workloads.train.errors import ConfigurationError

IGNORE_INDEX = -100
Example = tuple[list[int], list[int]]
"""(input_ids, labels) of one record."""
Int32Array = npt.NDArray[np.int32]


@dataclass(frozen=True)
class TokenBlocks:
    """N training sequences of L tokens: int32 arrays input_ids and labels (N, L), lengths (N,).

    Positions at or after a sequence's length are padding (pad id, label -100).
    """

    input_ids: Int32Array
    labels: Int32Array
    lengths: Int32Array

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def take(self, index: npt.NDArray[np.int64]) -> TokenBlocks:
        """The blocks at `index` (row numbers), in that order."""
        return TokenBlocks(self.input_ids[index], self.labels[index], self.lengths[index])


class Encoder:
    """Tokenizes records of one format for one tokenizer."""

    def __init__(self, tokenizer: Any, format: DatasetFormat, loss_on: Literal["assistant", "all"]) -> None:
        self.tokenizer = tokenizer
        self.format = format
        self.loss_on = loss_on
        self.eos = tokenizer.eos_token_id

    def encode(self, record: dict[str, Any], where: str = "a record") -> Example:
        """(input_ids, labels) of a checked record; ConfigurationError naming `where` when the chat
        template does not let the assistant's tokens be told apart."""
        if self.format == "chat":
            return self._chat(record["messages"], where)
        ids: list[int] = self.tokenizer(record["text"], add_special_tokens=self.format == "text")["input_ids"]
        if self.format == "text" and self.eos is not None and (not ids or ids[-1] != self.eos):
            ids = [*ids, int(self.eos)]
        return ids, list(ids)

    def _chat(self, messages: list[dict[str, str]], where: str) -> Example:
        render = self.tokenizer.apply_chat_template
        full: str = render(messages, tokenize=False)
        encoded = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = encoded["input_ids"]
        if self.loss_on == "all":
            return ids, list(ids)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            # The assistant's tokens are what the template adds between the generation prompt and
            # the end of its turn: found by rendering the two prefixes.
            start: str = render(messages[:index], tokenize=False, add_generation_prompt=True)
            end: str = render(messages[: index + 1], tokenize=False)
            if not (full.startswith(start) and full.startswith(end)):
                raise ConfigurationError(
                    f"{where}: the tokenizer's chat template renders earlier turns differently once later ones "
                    "follow, so the assistant's tokens cannot be told apart; set causalLM.lossOn: all"
                )
            spans.append((len(start), len(end)))
        labels = [
            token if any(low <= begin < high for low, high in spans) else IGNORE_INDEX
            for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
        ]
        return ids, labels


def pad_token_id(tokenizer: Any) -> int:
    """The padding token: the tokenizer's own, else its end-of-sequence token (Llama has no pad token)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pack(examples: Iterable[Example], length: int) -> TokenBlocks:
    """Concatenate the examples and cut them into blocks of exactly `length` tokens; the last
    partial block is dropped (as transformers' run_clm does)."""
    ids: list[int] = []
    labels: list[int] = []
    for example_ids, example_labels in examples:
        ids.extend(example_ids)
        labels.extend(example_labels)
    count = len(ids) // length
    shape = (count, length)
    return TokenBlocks(
        np.asarray(ids[: count * length], dtype=np.int32).reshape(shape),
        np.asarray(labels[: count * length], dtype=np.int32).reshape(shape),
        np.full(count, length, dtype=np.int32),
    )


def pad(examples: Iterable[Example], length: int, pad_id: int) -> TokenBlocks:
    """One block per example, truncated to `length` tokens and padded to it."""
    rows = [(ids[:length], labels[:length]) for ids, labels in examples]
    input_ids = np.full((len(rows), length), pad_id, dtype=np.int32)
    label_rows = np.full((len(rows), length), IGNORE_INDEX, dtype=np.int32)
    lengths = np.zeros(len(rows), dtype=np.int32)
    for row, (ids, labels) in enumerate(rows):
        input_ids[row, : len(ids)] = ids
        label_rows[row, : len(labels)] = labels
        lengths[row] = len(ids)
    return TokenBlocks(input_ids, label_rows, lengths)


def blocks(
    encoder: Encoder, records: Iterable[tuple[str, dict[str, Any]]], length: int, packing: bool, pad_id: int
) -> TokenBlocks:
    """Encode every (where, record) and pack or pad the results."""
    examples: Iterator[Example] = (encoder.encode(record, where) for where, record in records)
    if packing:
        return pack(examples, length)
    return pad(examples, length, pad_id)


class BatchEncoder:
    """Ray Data `map_batches` function: a batch of records (a `text` or `messages` column) to packed
    or padded blocks (`input_ids`, `labels`, `lengths` columns). It carries the tokenizer's files and
    loads them once per worker process; blocks never span two batches."""

    def __init__(
        self,
        tokenizer_files: dict[str, bytes],
        format: DatasetFormat,
        loss_on: Literal["assistant", "all"],
        length: int,
        packing: bool,
    ) -> None:
        self.tokenizer_files = tokenizer_files
        self.format = format
        self.loss_on = loss_on
        self.length = length
        self.packing = packing
        self._encoder: Encoder | None = None

    def _load(self) -> Encoder:
        if self._encoder is None:
            from transformers import AutoTokenizer

            directory = pathlib.Path(tempfile.mkdtemp(prefix="maas-tokenizer-"))
            for name, data in self.tokenizer_files.items():
                (directory / name).write_bytes(data)
            self._encoder = Encoder(AutoTokenizer.from_pretrained(directory), self.format, self.loss_on)
        return self._encoder

    def __call__(self, batch: dict[str, Any]) -> dict[str, Int32Array]:
        from maas_workloads.train.llm.records import check

        encoder = self._load()
        column = "messages" if self.format == "chat" else "text"
        values: Iterable[Any] = batch[column]
        if self.format == "plain":
            # Ray Data's read_text hands over lines without their breaks (str.splitlines), blank ones
            # included: give them back their break and skip the blank ones, as records.read does.
            values = (f"{line}\n" for line in values if str(line).strip())
        records = (
            (f"streamed record {index}", check({column: _plain(value)}, self.format, "a streamed record", column))
            for index, value in enumerate(values)
        )
        result = blocks(encoder, records, self.length, self.packing, pad_token_id(encoder.tokenizer))
        return {"input_ids": result.input_ids, "labels": result.labels, "lengths": result.lengths}


def _plain(value: Any) -> Any:
    """Ray Data hands nested columns over as numpy arrays of dicts; records want lists."""
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
