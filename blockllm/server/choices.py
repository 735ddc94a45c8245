"""The choices of one API request: each prompt x n submitted to the engine as its own request,
their token streams turned into text (stop strings, echo) and logprobs, and merged in arrival
order for streaming. The routes in app.py only shape these into OpenAI's JSON."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from blockllm.models.logprobs import TokenLogprob
from blockllm.models.sampling import SamplingParams
from blockllm.server.async_engine import AsyncEngine, Ticket
from blockllm.server.detokenize import TextStream


@dataclass
class Choice:
    """One answer being generated: its engine ticket and what it has produced so far."""
    index: int
    prompt_ids: list[int]
    echo: str  # the prompt's text when echo=true, streamed first
    echo_lps: bool = False  # with the prompt's logprobs (sent once the prompt's pass ran)
    echoed: bool = False
    ticket: Ticket | None = None
    text: str = ""
    finish: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    offset: int = 0  # where the next reported token's text starts in `text` (text_offset)

    @property
    def completion_tokens(self) -> int:
        return len(self.ticket.req.output) if self.ticket and self.ticket.req else 0


@dataclass(frozen=True)
class Event:
    """What one choice produced since its last event."""
    index: int
    text: str
    finish: str | None
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The engine-side settings every choice of the request shares."""
    model: str
    max_tokens: int
    stop_ids: frozenset[int]  # end the answer (EOS unless ignore_eos, stop_token_ids)
    stops: tuple[str, ...]  # stop strings
    include_stop: bool  # keep the stop string in the text
    min_tokens: int
    timeout_s: float | None


def submit_all(aengine: AsyncEngine, plan: Plan, choices: list[Choice],
               params: list[SamplingParams]) -> None:
    """Every choice to the engine, or none: a refusal (UserError, Busy) aborts those already
    submitted and propagates, for a 4xx."""
    try:
        for c, p in zip(choices, params, strict=True):
            c.ticket = aengine.submit(plan.model, c.prompt_ids, p, plan.max_tokens,
                                      plan.stop_ids, plan.min_tokens)
    except Exception:
        abort_all(aengine, choices)
        raise


def abort_all(aengine: AsyncEngine, choices: list[Choice]) -> None:
    for c in choices:
        if c.ticket is not None and c.finish is None:
            aengine.abort(c.ticket)


async def events(aengine: AsyncEngine, tok, plan: Plan, c: Choice) -> AsyncIterator[Event]:
    """One choice's events: text deltas with their tokens' logprobs, then its finish reason.
    Raises RuntimeError on an engine error or the timeout."""
    stream = TextStream(tok, plan.stop_ids, plan.stops, plan.include_stop)
    deadline = time.monotonic() + (plan.timeout_s or float("inf"))
    if c.echo and not c.echo_lps:
        c.text += c.echo
        c.offset = len(c.echo)
        yield Event(c.index, c.echo, None)
    while c.finish is None:
        try:
            kind, value = await asyncio.wait_for(c.ticket.events.get(),
                                                 min(deadline - time.monotonic(), 1e9))
        except TimeoutError:
            raise RuntimeError(f"error: request timed out after {plan.timeout_s:g} s") from None
        if kind == "finish":
            if isinstance(value, Exception):  # refused on the engine thread
                raise value
            if value and value.startswith("error"):
                raise RuntimeError(value)
        if c.echo_lps and not c.echoed:  # the prompt's pass ran: its text and logprobs first
            c.text, c.echoed = c.echo, True
            c.logprobs.extend(c.ticket.req.prompt_lps or ())
            yield Event(c.index, c.echo, None, tuple(c.logprobs))
        if kind == "finish":
            c.finish = "length" if value == "length" else "stop"
            delta = stream.finish()
            c.text += delta
            yield Event(c.index, delta, c.finish)
            return
        token, lp = value
        lps = ()
        if lp is not None and not stream.stopped:
            c.logprobs.append(lp)
            lps = (lp,)
        delta = stream.push(token)  # O(1) in the answer's length
        c.text += delta
        if stream.stopped:
            c.finish = "stop"
            aengine.abort(c.ticket)
            yield Event(c.index, delta, c.finish, lps)
        elif delta or lps:
            yield Event(c.index, delta, None, lps)


async def merged(aengine: AsyncEngine, tok, plan: Plan, choices: list[Choice]
                 ) -> AsyncIterator[Event]:
    """Every choice's events as they come; the first error aborts the rest and is raised. A
    consumer that stops early (the client went away) aborts what is still running."""
    if len(choices) == 1:  # the usual case: no tasks, no queue
        try:
            async for e in events(aengine, tok, plan, choices[0]):
                yield e
        finally:
            abort_all(aengine, choices)
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(c: Choice):
        try:
            async for e in events(aengine, tok, plan, c):
                await queue.put(e)
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            await queue.put(e)
        await queue.put(None)
    tasks = [asyncio.create_task(pump(c)) for c in choices]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        abort_all(aengine, choices)


def best_n(choices: list[Choice], per: int, n: int) -> list[Choice]:
    """Of each prompt's `per` sequences (best_of), the n of highest cumulative logprob, in
    that order, prompt by prompt."""
    def total(c: Choice) -> float:
        return sum(lp.logprob for lp in c.logprobs if lp.logprob is not None)
    return [c for p in range(0, len(choices), per)
            for c in sorted(choices[p:p + per], key=total, reverse=True)[:n]]


def token_text(tok, token: int) -> str:
    return tok.decode([token], skip_special_tokens=False)


def completion_logprobs(tok, lps: list[TokenLogprob] | tuple, c: Choice) -> dict:
    """OpenAI's completions `logprobs` object for these tokens of choice `c` (whose `offset`
    they advance: text_offset counts from the start of the choice's text, echo included)."""
    tokens, offsets = [], []
    for lp in lps:
        tokens.append(token_text(tok, lp.token))
        offsets.append(c.offset)
        c.offset += len(tok.decode([lp.token], skip_special_tokens=True))
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [None if lp.top is None else _best_first(tok, lp.top)
                             for lp in lps],
            "text_offset": offsets}


def _best_first(tok, top) -> dict[str, float]:
    """{token string: logprob}; ids whose strings coincide keep the best value."""
    out: dict[str, float] = {}
    for i, v in top:
        out.setdefault(token_text(tok, i), v)
    return out


def chat_logprobs(tok, lps: list[TokenLogprob] | tuple) -> dict:
    """OpenAI's chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def entry(token: int, value: float) -> dict:
        s = token_text(tok, token)
        return {"token": s, "logprob": value, "bytes": list(s.encode())}
    return {"content": [{**entry(lp.token, lp.logprob),
                         "top_logprobs": [entry(i, v) for i, v in lp.top]} for lp in lps]}
