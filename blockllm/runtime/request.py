"""A request's state, as the engine sees it. One enum, counters you can read."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from blockllm.errors import Busy, UserError
from blockllm.models.config import LlamaConfig
from blockllm.models.logprobs import TokenLogprob
from blockllm.models.sampling import Pick, SamplingParams
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
    chunk: int | None = None  # chunked prefill: at most this many context tokens per pass
    keys: tuple = ()  # the engine's key of each chain entry (set at submission)
    decoder_keys: tuple = ()  # those of its decoder blocks, in chain order
    output: list[int] = field(default_factory=list)
    state: State = State.WAITING
    stage: int = 0  # index in `chain` of the next block to run
    feed: list[int] = field(default_factory=list)  # tokens of the current pass
    done: int = 0  # tokens whose KV earlier passes wrote (the current pass writes `feed`)
    hidden: torch.Tensor | None = None  # (len(feed), hidden) between blocks
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error: ..."
    preemptions: int = 0
    cold: bool = False  # some block had to be loaded for it
    arrival: float = field(default_factory=time.perf_counter)
    token_times: list[float] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # per output token, if asked
    prompt_lps: list[TokenLogprob] | None = None  # per prompt token, once its pass ran

    def __post_init__(self):
        if self.params.prompt_logprobs is not None:
            self.chunk = None  # the whole prompt through the head in one pass
        self.feed = self.context[: self.chunk]

    @property
    def context(self) -> list[int]:
        """Every token whose KV the request needs: prompt and output so far."""
        return self.prompt + self.output

    @property
    def wants_prompt_logprobs(self) -> bool:
        """This pass is the prompt's (the first, not a recompute) and its logprobs are asked."""
        return self.params.prompt_logprobs is not None and self.prompt_lps is None and \
            self.done == 0 and not self.output

    def pick(self) -> Pick:
        """How the head picks this request's next token: its params, the token's index (a
        seeded draw's), the stop ids before min_tokens, its tokens where a penalty reads them."""
        banned = tuple(sorted(self.stop_ids)) if len(self.output) < self.min_tokens else ()
        return Pick.of(self.params, self.prompt, self.output, banned)

    @property
    def pass_end(self) -> int:
        """Tokens with KV once the current pass is through every block."""
        return self.done + len(self.feed)

    @property
    def prefilling(self) -> bool:
        """The current pass is a chunk of the context, not its last: no token is sampled."""
        return self.pass_end < len(self.context)

    def next_pass(self, token: int | None = None) -> None:
        """Back to the first block: the next chunk of the context, or the token just sampled."""
        self.done = self.pass_end
        self.feed = [token] if token is not None else \
            self.context[self.done: self.done + (self.chunk or len(self.context))]
        self.stage, self.hidden = 0, None

    def restart(self) -> None:
        """Preempted by recompute: its KV is gone; the next pass re-feeds the whole context."""
        self.state = State.WAITING
        self.stage, self.done = 0, 0
        self.feed = self.context[: self.chunk]
        self.hidden = None
        self.preemptions += 1


def check_request(models: dict[str, LlamaConfig], max_waiting: int, model: str,
                  prompt: list[int], max_tokens: int, min_tokens: int, waiting: int,
                  scoring: bool = False) -> None:
    """What a request's own fields can break against the served `models`, and the backlog
    (`waiting` requests queued, at most `max_waiting`): a UserError or Busy naming it."""
    if model not in models:
        raise UserError(f"model {model!r} is not served (served: {', '.join(models)})")
    cfg = models[model]
    if not prompt:
        raise UserError("the prompt is empty")
    if max_tokens < (0 if scoring else 1):
        raise UserError("max_tokens must be at least 1 (0 only with the prompt's logprobs)")
    if not 0 <= min_tokens <= max_tokens:
        raise UserError(f"min_tokens must be in [0, max_tokens={max_tokens}]")
    if len(prompt) + max_tokens > cfg.max_position_embeddings:
        raise UserError(f"prompt of {len(prompt)} tokens + max_tokens {max_tokens} exceeds "
                        f"the context length {cfg.max_position_embeddings}")
    if waiting >= max_waiting:
        raise Busy(f"the server is busy: {waiting} requests are waiting "
                   f"(max_waiting {max_waiting}); retry later")
