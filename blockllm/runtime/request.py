"""A request's state, as the engine sees it. One enum, counters you can read."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from blockllm.models.sampling import SamplingParams
from blockllm.zoo.partition import ChainEntry


class State(enum.Enum):
    WAITING = "waiting"  # not admitted: no KV reserved along its chain
    RUNNING = "running"  # admitted: somewhere in its chain, or back at the embedding
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    id: int
    model: str
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    stop_ids: frozenset[int]
    chain: tuple[ChainEntry, ...]  # assembled at submission
    min_tokens: int = 0  # stop_ids cannot be sampled before this many output tokens
    keys: tuple = ()  # the engine's key of each chain entry (set at submission)
    decoder_keys: tuple = ()  # those of its decoder blocks, in chain order
    output: list[int] = field(default_factory=list)
    state: State = State.WAITING
    stage: int = 0  # index in `chain` of the next block to run
    feed: list[int] = field(default_factory=list)  # tokens of the current pass
    hidden: torch.Tensor | None = None  # (len(feed), hidden) between blocks
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error: ..."
    preemptions: int = 0
    cold: bool = False  # some block had to be loaded for it
    arrival: float = field(default_factory=time.perf_counter)
    token_times: list[float] = field(default_factory=list)
    generator: torch.Generator | None = None

    def __post_init__(self):
        self.feed = list(self.prompt)
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def context(self) -> list[int]:
        """Every token whose KV the request needs: prompt and output so far."""
        return self.prompt + self.output

    def restart(self) -> None:
        """Preempted by recompute: its KV is gone; the next pass re-feeds the whole context."""
        self.state = State.WAITING
        self.stage = 0
        self.feed = self.context
        self.hidden = None
        self.preemptions += 1
