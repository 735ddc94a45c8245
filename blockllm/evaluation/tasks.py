"""Small tasks with a measurable score, generated from a seed (no data set is downloaded).

Each example is (prompt, answer); the answer is what follows the prompt up to a newline. The
score of a model on a task is the exact-match accuracy of its greedy completion's first line.
Perplexity text comes from Python's own `pydoc_data.topics` (shipped with every CPython).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

_WORDS = ("apple river stone cloud green light table paper music ocean tiger plant chair "
          "bread storm mouse queen pilot sugar lemon").split()
_POS = "wonderful great lovely excellent delightful superb pleasant fantastic".split()
_NEG = "terrible awful horrible dreadful boring poor disappointing bad".split()
_THINGS = "movie meal book hotel concert game trip show".split()


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[[random.Random], tuple[str, str]]  # one (prompt, answer) from an RNG
    extract: Callable[[str], str]  # the answer a completion gives, leniently read
    choices: tuple[str, ...] = ()  # a closed set of answers: also scored by likelihood

    def examples(self, n: int, seed: int) -> list[tuple[str, str]]:
        rng = random.Random(f"{self.name}:{seed}")
        return [self.make(rng) for _ in range(n)]


def _arith(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"Compute: {a}+{b}=", f"{a + b}"


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(_WORDS)
    return f"Reverse the letters: {w} ->", " " + w[::-1]


def _upper(rng: random.Random) -> tuple[str, str]:
    w = " ".join(rng.sample(_WORDS, 2))
    return f"Uppercase: {w} ->", " " + w.upper()


def _sentiment(rng: random.Random) -> tuple[str, str]:
    pos = rng.random() < 0.5
    adj = rng.choice(_POS if pos else _NEG)
    thing = rng.choice(_THINGS)
    return f"Review: The {thing} was {adj}.\nSentiment:", " positive" if pos else " negative"


def _first_int(text: str) -> str:
    m = re.search(r"-?\d+", text)
    return m.group(0) if m else ""


def _first_words(n: int, lower: bool = False):
    def extract(text: str) -> str:
        words = re.findall(r"[A-Za-z]+", text)[:n]
        out = " ".join(words)
        return out.lower() if lower else out
    return extract


# Scoring is lenient about format (the first number, the first words, case for labels), so a
# base model that knows the answer but phrases it differently still scores.
TASKS: dict[str, Task] = {
    "arith": Task("arith", _arith, _first_int),
    "reverse": Task("reverse", _reverse, _first_words(1)),
    "upper": Task("upper", _upper, _first_words(2)),
    "sentiment": Task("sentiment", _sentiment, _first_words(1, lower=True),
                      choices=(" positive", " negative")),
}

TRAIN_SEED, EVAL_SEED = 1, 2  # train and held-out examples never share a seed


def score(task: Task, completions: list[str], answers: list[str]) -> float:
    """Accuracy (0..100): the answer read from each completion equals the expected one."""
    hits = sum(task.extract(c) == task.extract(a)
               for c, a in zip(completions, answers, strict=True))
    return 100.0 * hits / len(answers)


def perplexity_text(n_chars: int = 20000, offset: int = 0) -> str:
    """English prose from Python's documentation topics, deterministic."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text[offset: offset + n_chars]
