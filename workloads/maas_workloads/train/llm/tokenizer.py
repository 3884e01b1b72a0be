"""The tokenizer of a model trained from scratch: byte-level BPE (Hugging Face `tokenizers`) trained
on the dataset, with a ChatML chat template, saved like any Hugging Face tokenizer."""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Iterator
from typing import Any, Final

END_OF_TEXT: Final = "<|endoftext|>"
"""Separates documents; also the padding token."""
TURN_START: Final = "<|im_start|>"
TURN_END: Final = "<|im_end|>"
"""Ends every chat turn: generation stops here."""
SPECIAL_TOKENS: Final = (END_OF_TEXT, TURN_START, TURN_END)
CHAT_TEMPLATE: Final = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as Qwen and many others use it: vLLM, transformers and llama.cpp all render it."""


def texts_of(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The strings a tokenizer should learn from: every text, every role and message content."""
    for record in records:
        if "messages" in record:
            for message in record["messages"]:
                yield message["role"]
                yield message["content"]
        else:
            yield record["text"]


def train_tokenizer(texts: Iterable[str], vocab_size: int, directory: pathlib.Path) -> Any:
    """Train byte-level BPE on `texts` (single digits kept apart, as Llama does, so numbers are
    learnable) and save it as a transformers PreTrainedTokenizerFast in `directory`; returns it.

    Deterministic for the same texts, so every attempt of a job trains the same tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT, model_max_length=1 << 30
    )
    wrapped.chat_template = CHAT_TEMPLATE
    directory.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(directory)
    return wrapped


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Tokens that end a generation: the tokenizer's end-of-sequence and, when it has one, ChatML's end of turn."""
    ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    turn_end = tokenizer.convert_tokens_to_ids(TURN_END) if TURN_END in tokenizer.get_vocab() else None
    if turn_end is not None and turn_end not in ids:
        ids.append(int(turn_end))
    return ids
