"""Chain assembly: pure, deterministic functions over ids and numbers (no tensors, no I/O).

Offline, `substitution_chain` turns equivalence evidence and a threshold into a candidate chain
(which is then measured end to end). Online, `assemble` picks, per request, one of a model's
*measured* chains whose score drop fits the model's budget, preferring chains whose blocks are
already resident and lightly loaded. A chain that was never measured is never chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from blockllm.zoo.equivalence import Evidence
from blockllm.zoo.partition import ChainEntry


def substitution_chain(exact: Sequence[ChainEntry], evidence: Sequence[Evidence],
                       threshold: float, block_users: Mapping[str, int]
                       ) -> tuple[ChainEntry, ...]:
    """Replace each entry that has a candidate with rel_l2_mean <= threshold, where it pays.

    `block_users[b]` is how many models run block b (with or without an adapter: LoRA requests
    batch in their base block). A swap pays when it frees bytes only this model uses (its block
    is its own, or it carries an adapter) or when the candidate block has more users (bigger
    batches). Among candidates that pay, prefer the block with the most users, then no adapter,
    then the closest (lowest rel_l2_mean), then the smallest ids.
    """
    best: dict[int, tuple] = {}
    for e in evidence:
        own, cand = exact[e.pos], e.candidate
        own_users = block_users.get(own.block, 1)
        frees = own_users <= 1 or own.adapter is not None
        grows = block_users.get(cand.block, 0) > own_users
        if e.metrics.rel_l2_mean > threshold or not (frees or grows):
            continue
        key = (-block_users.get(cand.block, 0), cand.adapter is not None, e.metrics.rel_l2_mean,
               cand.block, cand.adapter or "")
        if e.pos not in best or key < best[e.pos][0]:
            best[e.pos] = (key, cand)
    return tuple(best[p][1] if p in best else entry for p, entry in enumerate(exact))


def chain_blocks(chain: Sequence[ChainEntry]) -> set[str]:
    """The block ids a chain needs: its blocks and adapters (the engine's segments carry the
    adapter of each of their parts: a tuple, None where a part has none)."""
    out = set()
    for e in chain:
        out.add(e.block)
        adapters = e.adapter if isinstance(e.adapter, tuple) else (e.adapter,)
        out.update(a for a in adapters if a)
    return out


def saved_bytes(exact: Sequence[ChainEntry], chain: Sequence[ChainEntry],
                others: set[str], block_bytes: Mapping[str, int]) -> int:
    """Bytes of the exact chain's blocks this chain no longer needs and no other model uses."""
    dropped = chain_blocks(exact) - chain_blocks(chain) - others
    added = chain_blocks(chain) - chain_blocks(exact) - others
    return sum(block_bytes[b] for b in dropped) - sum(block_bytes[b] for b in added)


@dataclass(frozen=True)
class Choice:
    label: str  # which measured option
    chain: tuple[ChainEntry, ...]
    load_bytes: int  # bytes that must be loaded before it can run
    load: float  # summed load (e.g. queue depth) of its blocks
    drop_points: float  # its measured score drop


def assemble(options: Sequence[tuple[str, tuple[ChainEntry, ...], float]], budget: float,
             resident: frozenset[str], load: Mapping[str, float],
             block_bytes: Mapping[str, int]) -> Choice:
    """Pick one of a model's measured chains: (label, chain, drop_points) triples.

    Options whose drop exceeds `budget` are never chosen; the "exact" option (drop 0) must be
    present, so there is always an answer. Among the rest, minimize, in order: bytes not yet
    resident, total load of the chain's blocks, measured drop, then label (determinism).
    """
    if not any(label == "exact" for label, _, _ in options):
        raise ValueError("the exact chain must be among the options")
    best: Choice | None = None
    for label, chain, drop in options:
        if drop > budget and label != "exact":
            continue
        blocks = chain_blocks(chain)
        c = Choice(label, chain, sum(block_bytes[b] for b in blocks - resident),
                   sum(load.get(b, 0.0) for b in blocks), drop)
        if best is None or (c.load_bytes, c.load, c.drop_points, c.label) < (
                best.load_bytes, best.load, best.drop_points, best.label):
            best = c
    assert best is not None
    return best
