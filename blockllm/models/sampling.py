"""Token sampling on the device, batched: greedy, temperature, top-k, top-p and per-request
seeds, after the logit processors of the OpenAI/vLLM API (logit_bias, repetition, frequency
and presence penalties), with the logprobs a request asks for. Only token ids (and asked-for
logprobs) leave the device: never a (batch, vocab) logits tensor.

A head batch is one `pick` call over its (B, vocab) logits, one `Pick` per row. A sampled
row's token inverts its CDF (after temperature, top-k and top-p, all per-row tensors) at one
uniform draw: one number per row, where an exponential race (vLLM's) draws one per vocabulary
entry, 1 ms per row of SmolLM2's 49k on this CPU. Top-k and top-p work on a partial top-k
rather than a full sort (2 ms per row here) unless a nucleus may be wider. A seeded row's
uniform is a function of (seed, index of the token in the output) alone: a token does not
depend on which device or batch drew it, a recomputed (preempted) request draws the same
tokens again, and choice i of a request with seed s equals the single request with seed s+i.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from blockllm.models.logprobs import TokenLogprob, logprobs_of, token_logprobs


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose mass reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    seed: int | None = None  # per-request seed; None draws from the global generator
    logprobs: int | None = None  # report the chosen token's logprob and this many top ones
    prompt_logprobs: int | None = None  # the same for every prompt token after the first
    presence_penalty: float = 0.0  # minus this from every token already in the output
    frequency_penalty: float = 0.0  # minus this times the token's count in the output
    repetition_penalty: float = 1.0  # vLLM's: logits of prompt/output tokens /= (or *=) this
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if min(self.logprobs or 0, self.prompt_logprobs or 0) < 0:
            raise ValueError("logprobs must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def greedy(self) -> bool:
        """Argmax: temperature below 1e-5 (vLLM's cut: logits / t overflow float32 as t goes
        to 0) or top_k 1."""
        return self.temperature < 1e-5 or self.top_k == 1

    @property
    def processed(self) -> bool:
        """Some processor changes the logits before sampling."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias or
                    self.repetition_penalty != 1.0)


class Pick(NamedTuple):
    """What the device needs to choose one head row's next token."""
    params: SamplingParams
    step: int = 0  # the token's index in the output: a seeded row's draw is (seed, step)'s
    banned: tuple[int, ...] = ()  # ids it may not pick (stop ids before min_tokens)
    prompt: tuple[int, ...] = ()  # prompt and output so far, where a penalty needs them
    output: tuple[int, ...] = ()

    @classmethod
    def of(cls, params: SamplingParams, prompt: list[int], output: list[int],
           banned: tuple[int, ...] = ()) -> Pick:
        """The next token's Pick of a sequence (the engine's Request and the reference chain
        build it here alike): its tokens travel only where a penalty reads them."""
        if not params.processed:
            return cls(params, len(output), banned)
        return cls(params, len(output), banned, tuple(prompt), tuple(output))


GREEDY = Pick(SamplingParams())


@torch.inference_mode()
def pick(logits: torch.Tensor, picks: Sequence[Pick]) -> list[int | TokenLogprob]:
    """Each row's next token of (B, vocab) logits, picked for the whole batch at once on their
    device; a TokenLogprob where the row's params ask for logprobs."""
    want = [b for b, p in enumerate(picks) if p.params.logprobs is not None]
    raw = logits[want] if want else None  # logprobs come from the logits before processors
    shaped = [b for b, p in enumerate(picks) if p.banned or p.params.processed]
    if shaped:
        logits = logits.float().clone()
        for b in shaped:
            _shape(logits[b], picks[b])
    tokens = logits.argmax(-1)
    drawn = [b for b, p in enumerate(picks) if not p.params.greedy]
    if drawn:
        tokens[drawn] = _draw(logits[drawn], [picks[b] for b in drawn])
    ids = tokens.tolist()  # the one sync: B ints
    out: list = list(ids)
    if want:
        ks = [picks[b].params.logprobs for b in want]
        lps = token_logprobs([ids[b] for b in want], *logprobs_of(raw, tokens[want], max(ks)),
                             ks)
        for b, lp in zip(want, lps, strict=True):
            out[b] = lp
    return out


def _shape(row: torch.Tensor, p: Pick) -> None:
    """In place on one float32 row (vocab,): logit_bias and the penalties as vLLM applies them
    (repetition over prompt and output tokens, frequency and presence over output tokens), then
    the banned ids to -inf."""
    params, dev = p.params, row.device
    if params.logit_bias:
        ids, bias = zip(*params.logit_bias, strict=True)
        row[list(ids)] += torch.tensor(bias, device=dev)
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(p.prompt) | set(p.output)), dtype=torch.long,
                            device=dev)
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / params.repetition_penalty,
                                vals * params.repetition_penalty)
    if p.output and (params.frequency_penalty or params.presence_penalty):
        counts = torch.bincount(torch.tensor(p.output, device=dev),
                                minlength=row.numel()).float()
        row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    if p.banned:
        row[list(p.banned)] = float("-inf")


def _draw(logits: torch.Tensor, picks: list[Pick]) -> torch.Tensor:
    """One token per row of (S, vocab) logits, drawn at each row's temperature within its top-k
    and top-p by inverting the row's CDF at its uniform draw (`_uniform`). Top-k and top-p
    work on a partial top-n of each row, n = max(k, 256), then 4096 for the rows whose kept
    set may reach past those, and sort a whole row only where it may reach past 4096 (here a
    sort of 49k costs 1.9 ms a row, a top-4096 0.3 ms, a top-256 0.1 ms)."""
    dev, vocab = logits.device, logits.shape[1]
    temps = torch.tensor([p.params.temperature for p in picks], device=dev)
    probs = torch.softmax(logits.float() / temps[:, None], -1)
    u = torch.tensor([_uniform(p) for p in picks], dtype=torch.float64, device=dev)
    ks = [min(p.params.top_k or vocab, vocab) for p in picks]  # top_k >= vocab keeps all
    ps = [p.params.top_p for p in picks]
    out = torch.empty(len(picks), dtype=torch.long, device=dev)
    plain = [r for r, (k, p) in enumerate(zip(ks, ps, strict=True)) if k == vocab and p == 1.0]
    if plain:  # the whole distribution: no sort, no top-n
        out[plain] = _invert(probs[plain], u[plain])
    rows = [r for r, (k, p) in enumerate(zip(ks, ps, strict=True)) if k < vocab or p < 1.0]
    nucleus_only = any(ks[r] == vocab for r in rows)  # how many a nucleus needs is unknown
    least = max([ks[r] for r in rows if ks[r] < vocab] + [256 if nucleus_only else 1])
    for n in sorted({min(vocab, max(least, n)) for n in (256, 4096, vocab)}):
        if not rows:
            break
        v, i = probs[rows].topk(n, -1) if n < vocab else probs[rows].sort(-1, descending=True)
        kept, fits = _top_k_top_p(v, [ks[r] for r in rows], [ps[r] for r in rows], vocab)
        fits = [f or n == vocab for f in fits.tolist()]
        fit = [j for j, f in enumerate(fits) if f]
        done = [rows[j] for j in fit]
        if done:
            out[done] = _invert_kept(kept[fit], i[fit], u[done], vocab)
        rows = [r for r, f in zip(rows, fits, strict=True) if not f]
    return out


def _top_k_top_p(vals: torch.Tensor, ks: list[int], ps: list[float], vocab: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a distribution's most likely probs (best first: all of it or a top-n) with 0
    outside each row's kept set, and whether that set lies within `vals` for sure. Kept: the
    top k (every token as likely as the k-th: ties stay, as vLLM's mask by value), then the
    nucleus, the smallest such set whose mass, renormalised over the top k (over the whole
    vocabulary without one), reaches top_p, with every token as likely as its last. Kept by
    value, not position: the same set whatever order a sort gives tied tokens, so a seeded
    draw does not depend on the batch (whose widest top-k sets the width of `vals`)."""
    dev, n = vals.device, vals.shape[1]
    k = torch.tensor(ks, device=dev)
    has_k = (k < vocab)[:, None]
    kth = vals.gather(1, (k.clamp(max=n) - 1)[:, None])
    kv = vals * (~has_k | (vals >= kth))
    cum = kv.cumsum(-1)
    total = torch.where(has_k, cum[:, -1:], 1.0)
    reach = (cum - kv) < torch.tensor(ps, device=dev)[:, None] * total  # a prefix, >= 1
    last = vals.gather(1, (reach.sum(-1, keepdim=True) - 1))  # the least likely kept
    # within `vals` for sure only if the first token left out is less likely than the last
    # kept (else the set may go on past it: a tie, or a nucleus that needs more tokens)
    return kv * (vals >= last), (vals[:, -1:] < last)[:, 0]


def _invert_kept(kept: torch.Tensor, ids: torch.Tensor, u: torch.Tensor, vocab: int
                 ) -> torch.Tensor:
    """The token drawn from kept probs (S, n) of tokens `ids` (best first): the CDF runs in
    token id order, not by probability, so logits that differ in the last bits (another batch,
    a recompute) move a draw only where u falls at a boundary; in probability order, two
    near-equal tokens swapping places would swap whoever drew either."""
    if kept.shape[1] == vocab:  # the whole row: back to id order
        return _invert(torch.zeros_like(kept).scatter_(1, ids, kept), u)
    ids, order = ids.sort(-1)
    return ids.gather(1, _invert(kept.gather(1, order), u)[:, None])[:, 0]


def _invert(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row of (S, n) probs (not normalised), the index where its CDF passes u * total:
    a draw from the row. right=True: never an index of probability 0."""
    cdf = probs.double().cumsum(-1)
    j = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
    return j[:, 0].clamp_(max=probs.shape[1] - 1)


def _uniform(p: Pick) -> float:
    """The row's draw in [0, 1): for a seeded row, a function of (seed, step) alone, the same
    whatever the device or batch that draws it."""
    rng = random.Random(_stream(p.params.seed, p.step)) if p.params.seed is not None else _RNG
    return rng.random() * (1 - 1e-12)  # u * total < total in float64: never past the last


_RNG = random.Random()


def _stream(seed: int, step: int) -> int:
    """The generator seed of a seeded row's draw number `step`: distinct per (seed, step)."""
    return (seed * 0x9E3779B97F4A7C15 + step) % 2**64
