"""`synthetic:arithmetic`: chat-formatted sums that a tiny model visibly learns in minutes on CPU.

Each conversation asks for a + b (a two-digit number plus a one-digit one, by default) in one of
a few phrasings; the assistant shows its work, units first: `7 + 8 = 15, so 47 + 8 = 55`. (Asked
for the sum alone, a 0.5M-parameter model needs several times more steps to get most unseen sums
right; with the units written out, each step is a single-digit fact it has seen many times.)
Some (a, b) pairs are never generated: a question about them is held out, so a right answer
shows the model learned to add rather than remembered the pair. Standard library only: `maas run`
imports it to pick such a question.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

SCHEME = "synthetic:arithmetic"
QUESTIONS = ("What is {a} + {b}?", "Compute {a} + {b}.", "{a} plus {b}?", "How much is {a} + {b}?", "Add {a} and {b}.")
_LIMITS = {"samples": (1, 10_000_000), "seed": (0, 2**31 - 1), "max": (9, 9_999), "addend": (1, 9_999)}

Message = dict[str, str]


@dataclass(frozen=True)
class ArithmeticOptions:
    """`synthetic:arithmetic?samples=5000&seed=0&max=99&addend=9`: how many conversations, the random
    seed, and the largest first and second operands."""

    samples: int = 5000
    seed: int = 0
    max: int = 99
    addend: int = 9

    @classmethod
    def parse(cls, uri: str) -> ArithmeticOptions:
        """Options from the URI; ValueError names an unknown or out-of-range option."""
        generator, _, query = uri.partition("?")
        if generator != SCHEME:
            raise ValueError(f"unknown generator {generator!r}; use {SCHEME}?samples=N")
        values: dict[str, int] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in _LIMITS:
                raise ValueError(f"unknown option {key!r}; known: {', '.join(_LIMITS)}")
            low, high = _LIMITS[key]
            if not value.isdigit() or not low <= int(value) <= high:
                raise ValueError(f"{key}={value!r} must be a whole number from {low} to {high}")
            values[key] = int(value)
        return cls(**values)


def is_held_out(a: int, b: int) -> bool:
    """About one pair in eleven is never trained on."""
    return (7 * a + 3 * b) % 11 == 0


def conversation(a: int, b: int, phrasing: int = 0) -> list[Message]:
    """One question and its answer, in the OpenAI `messages` shape."""
    question = QUESTIONS[phrasing % len(QUESTIONS)].format(a=a, b=b)
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer(a, b)}]


def answer(a: int, b: int) -> str:
    """The assistant's reply: the units' sum first, then the whole."""
    return f"{a % 10} + {b} = {a % 10 + b}, so {a} + {b} = {a + b}"


def conversations(options: ArithmeticOptions) -> Iterator[dict[str, Any]]:
    """`options.samples` records `{"messages": [...]}`, the same for the same options."""
    rng = random.Random(options.seed)
    produced = 0
    while produced < options.samples:
        a, b = rng.randint(0, options.max), rng.randint(0, options.addend)
        if is_held_out(a, b):
            continue
        produced += 1
        yield {"messages": conversation(a, b, rng.randrange(len(QUESTIONS)))}


def held_out_question(options: ArithmeticOptions, index: int = 0) -> tuple[str, str]:
    """(question, expected answer) about a pair the dataset never contains."""
    pairs = [(a, b) for a in range(10, options.max + 1) for b in range(1, options.addend + 1) if is_held_out(a, b)]
    a, b = pairs[(index * 7919) % len(pairs)]
    return QUESTIONS[0].format(a=a, b=b), answer(a, b)
