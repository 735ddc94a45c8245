"""End-to-end measurement of equivalence-assembled chains: the evidence the budget is checked on.

For each threshold, `substitution_chain` proposes a chain; we run it on the model's own task
(held-out examples) and held-out text, and store its score drop and the bytes it saves as a
chain option. Only these measured options are ever served (see assembly.assemble).
"""

from __future__ import annotations

from tqdm import tqdm

from blockllm.evaluation.evaluate import perplexity, task_score
from blockllm.evaluation.tasks import TASKS
from blockllm.zoo import manifest as mf
from blockllm.zoo.assembly import chain_blocks, saved_bytes, substitution_chain
from blockllm.zoo.evidence import ChainOption, load_evidence
from blockllm.zoo.ingest import entries_model
from blockllm.zoo.partition import ChainEntry
from blockllm.zoo.store import Zoo

THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # on rel_l2_mean of block outputs (updates)
# the largest swept threshold whose chains kept every variant within 1 point
DEFAULT_THRESHOLD = 0.01


def model_tasks(zoo: Zoo, name: str) -> list[str]:
    """A variant's own task; for a model without one (the base), every task in the zoo."""
    task = zoo.model(name).meta.get("task")
    if task:
        return [task]
    tasks = sorted({zoo.model(m).meta.get("task") for m in zoo.models()} - {None})
    return tasks or sorted(TASKS)


def measure_chain(zoo: Zoo, name: str, chain, n_eval: int, extra: dict | None = None
                  ) -> tuple[float, float]:
    """(mean task score over the model's tasks, perplexity) of any chain for model `name`."""
    model = entries_model(zoo, name, chain, extra=extra)
    tok = zoo.tokenizer(name)
    tasks = model_tasks(zoo, name)
    score = sum(task_score(model, tok, t, n_eval) for t in tasks) / len(tasks)
    return score, perplexity(model, tok)


def other_models_blocks(zoo: Zoo, name: str) -> set[str]:
    return set().union(*(chain_blocks(zoo.chain(m)) for m in zoo.models() if m != name))


def measure_options(zoo: Zoo, name: str, calib_hash: str, n_eval: int = 50,
                    thresholds=THRESHOLDS, progress: bool = True) -> list[ChainOption]:
    """Measure the exact chain and the chain each threshold assembles; store them all."""
    exact = tuple(zoo.chain(name))
    evidence = load_evidence(zoo, name)
    block_users = mf.use_counts(zoo.con)
    others = other_models_blocks(zoo, name)
    sizes = {r.id: r.nbytes for r in mf.all_blocks(zoo.con)}
    measured: dict[tuple[ChainEntry, ...], tuple[float, float]] = {}
    base_score, base_ppl = measured[exact] = measure_chain(zoo, name, exact, n_eval)
    out = [ChainOption("exact", exact, base_score, base_ppl, 0.0, 0, None)]
    for t in tqdm(thresholds, desc=f"chains {name}", disable=not progress, leave=False):
        chain = substitution_chain(exact, evidence, t, block_users)
        if chain not in measured:
            measured[chain] = measure_chain(zoo, name, chain, n_eval)
        score, ppl = measured[chain]
        out.append(ChainOption(f"t={t:g}", chain, score, ppl, base_score - score,
                               saved_bytes(exact, chain, others, sizes), t))
    for o in out:
        zoo.add_chain_option(name, o.label, list(o.chain), [], {
            "score": o.score, "perplexity": o.perplexity, "drop_points": o.drop_points,
            "saved_bytes": o.saved_bytes, "threshold": o.threshold, "calib_hash": calib_hash,
            "n_eval": n_eval})
    return out
