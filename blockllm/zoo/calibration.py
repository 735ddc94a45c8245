"""Calibration sequences for equivalence and stitching: real text and real task prompts.

Text comes from Python's `pydoc_data.topics`, starting far past the part that held-out
perplexity reads (blockllm.evaluation.tasks.perplexity_text starts at 0), and task prompts use
the training seed, never the evaluation seed. The set's hash is stored with all evidence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from blockllm.evaluation.tasks import TASKS, TRAIN_SEED, perplexity_text

CALIBRATION_OFFSET = 200_000  # characters into the documentation text


@dataclass(frozen=True)
class CalibrationSet:
    sequences: tuple[tuple[int, ...], ...]  # token ids
    hash: str  # sha256 of the ids, 16 hex

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def calibration_set(tok, n_text: int = 6, n_task: int = 4, seq_len: int = 128) -> CalibrationSet:
    """n_text windows of documentation and n_task sequences of task examples, seq_len tokens."""
    seqs: list[tuple[int, ...]] = []
    ids = tok.encode(perplexity_text(n_text * seq_len * 8, offset=CALIBRATION_OFFSET))
    for i in range(n_text):
        chunk = ids[i * seq_len: (i + 1) * seq_len]
        if len(chunk) == seq_len:
            seqs.append(tuple(chunk))
    tasks = sorted(TASKS)
    for j in range(n_task):
        task = TASKS[tasks[j % len(tasks)]]
        row: list[int] = []
        for prompt, answer in task.examples(64, TRAIN_SEED + 100 + j):
            row += tok.encode(prompt + answer + "\n")
            if len(row) >= seq_len:
                break
        seqs.append(tuple(row[:seq_len]))
    digest = hashlib.sha256(json.dumps(seqs).encode()).hexdigest()[:16]
    return CalibrationSet(tuple(seqs), digest)
