"""Byte accounting of one model in the zoo: shared vs unique, and a printable chain."""

from __future__ import annotations

from dataclasses import dataclass

from blockllm.zoo import manifest as mf
from blockllm.zoo.store import Zoo


@dataclass(frozen=True)
class ModelBytes:
    n_blocks: int  # blocks in the chain, adapters included
    total: int  # bytes of the whole chain
    shared: int  # bytes of blocks other models use too
    unique: int  # bytes only this model uses


def _entries(z: Zoo, name: str) -> list[str]:
    ids = []
    for e in z.chain(name):
        ids.append(e.block)
        if e.adapter:
            ids.append(e.adapter)
    return ids


def model_bytes(z: Zoo, name: str) -> ModelBytes:
    uses = mf.use_counts(z.con)
    total = shared = 0
    ids = _entries(z, name)
    for bid in ids:
        n = z.block_info(bid).nbytes
        total += n
        shared += n if uses.get(bid, 0) > 1 else 0
    return ModelBytes(len(ids), total, shared, total - shared)


def chain_table(z: Zoo, name: str) -> list[str]:
    from blockllm.units import fmt_bytes
    uses = mf.use_counts(z.con)
    lines = [f"{'pos':>4} {'kind':8s} {'block':14s} {'bytes':>10s} {'models':>6s}"]
    for pos, e in enumerate(z.chain(name)):
        for bid in (e.block, e.adapter):
            if bid is None:
                continue
            info = z.block_info(bid)
            lines.append(f"{pos:4d} {info.kind:8s} {bid[:12]:14s} {fmt_bytes(info.nbytes):>10s} "
                         f"{uses.get(bid, 0):6d}")
    return lines
