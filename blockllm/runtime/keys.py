"""BlockKey: what the engine queues, places, pages and calls, as a typed value.

A key names one runnable copy of a block (a zoo block, or a segment of them:
runtime/segments.py). With sharing (blockllm) every served model whose chain holds the block
uses the same key, so their requests batch together; without sharing (the ablation and the
per-model baseline) each model has its own copy (`owner`). A tied head (`tied_embed`) holds
only the final norm and reads its embedding's matrix for the logits, so it is placed beside
that embedding, and its key says which one. Replica i of a key (EngineConfig.replicas) is
the same block with its own worker, queue and KV pool on another device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockKey:
    block: str  # the zoo block (or segment) id it runs
    owner: str | None = None  # without sharing: the model whose own copy this is
    tied_embed: str | None = None  # a tied head: the embedding block its logits read
    replica: int = 0  # replica i of the key (0: the key itself)

    @property
    def tied(self) -> bool:
        return self.tied_embed is not None

    @property
    def base(self) -> BlockKey:
        """The key this one is a replica of (itself for replica 0)."""
        return dataclasses.replace(self, replica=0) if self.replica else self

    def replica_of(self, i: int) -> BlockKey:
        """Replica i of this key's base."""
        return dataclasses.replace(self, replica=i)

    def __str__(self) -> str:
        """Short and unique enough for logs and metric labels: ids cut to 12 characters."""
        parts = [self.block[:12]]
        if self.owner is not None:
            parts.append(self.owner)
        if self.tied_embed is not None:
            parts += ["tied", self.tied_embed[:12]]
        if self.replica:
            parts += ["replica", str(self.replica)]
        return "/".join(parts)
