"""Segments: the unit the engine executes, made of the blocks the zoo stores.

The zoo dedups per layer (a block may be one decoder layer), but running one call per layer
costs a Python round trip, attention metadata and a queue hop per layer per token: 32 calls
per token for SmolLM2. A *segment* is a maximal run of consecutive decoder entries of a chain
that exactly the same served chains cross together (same block at the same position). The
engine queues, batches, pages KV and calls per segment, so a model served alone runs
embed -> one segment of all its layers -> head, and base + top-4 partial fine-tunes run
embed -> the 26 shared layers (one batch for every model's requests) -> each model's own 4
layers -> head. `--layers-per-block` then only sets the granularity of storage and sharing.

Why "exactly the same chains": chain A may fuse positions i and i+1 only if the chains that
share its block at i are the chains that share its block at i+1; then every one of those
chains fuses the same two positions, so the segments of different chains never overlap
partially and a shared segment has one queue, one KV pool and one batch.

A LoRA model's entries carry adapters on the base's blocks: they fuse with the base's, and a
request brings its adapters for the segment's layers (`Segment.adapter`, per part).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from blockllm.zoo.manifest import BlockRow
from blockllm.zoo.partition import ChainEntry


@dataclass(frozen=True)
class Segment:
    """Consecutive decoder entries run as one block. Duck-types a ChainEntry for the engine:
    `block` is its id, `adapter` the adapter ids of its parts (None when it has none)."""
    parts: tuple[ChainEntry, ...]
    block: str = field(init=False)  # sha256 of its blocks' ids: one id per distinct run

    def __post_init__(self):
        h = hashlib.sha256(b"segment\0" + "\0".join(p.block for p in self.parts).encode())
        object.__setattr__(self, "block", h.hexdigest())

    @property
    def blocks(self) -> tuple[str, ...]:
        return tuple(p.block for p in self.parts)

    @property
    def adapter(self) -> tuple[str | None, ...] | None:
        ids = tuple(p.adapter for p in self.parts)
        return ids if any(ids) else None


Entry = ChainEntry | Segment


def parts_of(entry: Entry) -> tuple[str, ...]:
    """The zoo blocks an entry runs: a segment's parts, or the block itself."""
    return entry.blocks if isinstance(entry, Segment) else (entry.block,)


def segment_chains(chains: Mapping[Hashable, Sequence[ChainEntry]],
                   kind: Callable[[str], str],
                   group: Callable[[Hashable], Hashable] = lambda _: 0,
                   nbytes: Callable[[str], int] = lambda _: 0, max_bytes: int | None = None
                   ) -> dict[Hashable, tuple[Entry, ...]]:
    """Every chain with its decoder runs as segments (see the module doc). `kind(block id)`;
    chains share segments only within one `group` (all one group when blocks are shared;
    without sharing, a model's own chains). A run is cut before a block that would take its
    `nbytes` past `max_bytes` (a segment must fit a device's weight budget, with room to
    spare for the next one); the cut depends only on the run's own blocks, so every chain
    that crosses the run cuts it alike."""
    out = {}
    for name, chain in chains.items():
        peers = [c for n, c in chains.items() if group(n) == group(name)]

        def label(i: int) -> frozenset[int] | None:
            if kind(chain[i].block) != "decoder":
                return None
            return frozenset(j for j, c in enumerate(peers)
                             if i < len(c) and c[i].block == chain[i].block)
        new: list[Entry] = []
        run: list[ChainEntry] = []
        prev, size = None, 0
        for i, e in enumerate(chain):
            lab, n = label(i), nbytes(e.block)
            if run and (lab != prev or (max_bytes is not None and size + n > max_bytes)):
                new.append(Segment(tuple(run)))
                run, size = [], 0
            if lab is None:
                new.append(e)
            else:
                run.append(e)
                size += n
            prev = lab
        if run:
            new.append(Segment(tuple(run)))
        out[name] = tuple(new)
    return out


def segment_row(seg: Segment, rows: Mapping[str, BlockRow]) -> BlockRow:
    """A segment as the engine sees a block: a decoder of all its parts' layers and bytes."""
    parts = [rows[b] for b in seg.blocks]
    sig = {**parts[0].signature, "n_layers": sum(r.signature["n_layers"] for r in parts)}
    return BlockRow(seg.block, "decoder", sig, sum(r.nbytes for r in parts),
                    sum(r.file_bytes for r in parts), "segment")


def segment_served(chains: dict[str, tuple], options: dict[str, list[tuple]],
                   info: dict[str, BlockRow], share: bool, max_bytes: int
                   ) -> tuple[dict[str, tuple], dict[str, list[tuple]]]:
    """The engine's served chains and their equivalent options ((label, chain, drop) per
    model), decoder runs as segments; each new segment's row is added to `info`. Without
    sharing, a model's chains share segments with no other model's."""
    named = {(m, -1): c for m, c in chains.items()}
    for m, opts in options.items():
        named.update({(m, j): chain for j, (_, chain, _) in enumerate(opts)})
    seg = segment_chains(named, lambda b: info[b].kind,
                         (lambda n: 0) if share else (lambda n: n[0]),
                         lambda b: info[b].nbytes, max_bytes)
    for chain in seg.values():
        for e in chain:
            if isinstance(e, Segment) and e.block not in info:
                info[e.block] = segment_row(e, info)
    return ({m: seg[m, -1] for m in chains},
            {m: [(label, seg[m, j], drop) for j, (label, _, drop) in enumerate(opts)]
             for m, opts in options.items()})
