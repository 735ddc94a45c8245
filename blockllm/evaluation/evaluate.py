"""Measure a model (a ChainModel from the zoo) on a task and on held-out text."""

from __future__ import annotations

import math

import torch

from blockllm.models.chain import ChainModel
from blockllm.evaluation.tasks import EVAL_SEED, TASKS, perplexity_text, score


def task_score(model: ChainModel, tok, task: str, n: int = 50, batch: int = 16) -> float:
    """Accuracy (0..100) of greedy completions on n held-out examples."""
    t = TASKS[task]
    examples = t.examples(n, EVAL_SEED)
    # room for the longest answer and its newline, in this tokenizer's tokens, plus slack
    budget = max(len(tok.encode(a + "\n")) for _, a in examples) + 2
    completions = []
    for i in range(0, n, batch):
        chunk = examples[i: i + batch]
        outs = model.generate([tok.encode(p) for p, _ in chunk], budget,
                              stop_ids=tuple(tok.encode("\n")))
        completions += [tok.decode(o) for o in outs]
    return score(t, completions, [a for _, a in examples])


@torch.inference_mode()
def choice_score(model: ChainModel, tok, task: str, n: int = 50) -> float:
    """Accuracy (0..100) of picking the answer of highest log-likelihood among the task's
    choices on n held-out examples: a continuation's tokens are those of prompt + choice past
    the prompt's own (as lm-evaluation-harness splits them)."""
    t = TASKS[task]
    right = 0
    for prompt, answer in t.examples(n, EVAL_SEED):
        ctx = tok.encode(prompt)
        scores = []
        for choice in t.choices:
            whole = tok.encode(prompt + choice)
            logits = model.prompt_logits(whole[:-1]).float()
            lp = torch.log_softmax(logits[len(ctx) - 1:], -1)
            target = torch.tensor(whole[len(ctx):], device=lp.device)
            scores.append(float(lp.gather(1, target[:, None]).sum()))
        right += t.choices[scores.index(max(scores))] == answer
    return 100.0 * right / n


@torch.inference_mode()
def perplexity(model: ChainModel, tok, n_chars: int = 4000, window: int = 256) -> float:
    """Token perplexity on Python's documentation text, in non-overlapping windows."""
    ids = tok.encode(perplexity_text(n_chars))
    nll, count = 0.0, 0
    for i in range(0, len(ids) - 1, window):
        chunk = ids[i: i + window + 1]
        if len(chunk) < 2:
            break
        logits = model.prompt_logits(chunk[:-1]).float()
        target = torch.tensor(chunk[1:], device=logits.device)
        nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        count += len(chunk) - 1
    return math.exp(nll / count)
