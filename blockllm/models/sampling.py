"""Token sampling: greedy, temperature, top-k, top-p, seeded per request; the logit processors
of the OpenAI/vLLM API (logit_bias, repetition, frequency and presence penalties) and the
log-probabilities a request asks for."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
        return self.temperature == 0 or self.top_k == 1

    @property
    def processed(self) -> bool:
        """Some processor changes the logits before sampling."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias or
                    self.repetition_penalty != 1.0)

    @property
    def on_device(self) -> bool:
        """The token (and its logprobs) can be picked where the logits are, without them on
        the host: argmax of logits no processor changes."""
        return self.greedy and not self.processed


def process(logits: torch.Tensor, params: SamplingParams, prompt: list[int],
            output: list[int]) -> torch.Tensor:
    """logits (vocab,) after logit_bias and the penalties, as vLLM applies them: repetition
    over prompt and output tokens, frequency and presence over output tokens."""
    if not params.processed:
        return logits
    logits = logits.float().clone()
    if params.logit_bias:
        ids, bias = zip(*params.logit_bias, strict=True)
        logits[list(ids)] += torch.tensor(bias)
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt) | set(output)), dtype=torch.long)
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / params.repetition_penalty,
                                   vals * params.repetition_penalty)
    if output and (params.frequency_penalty or params.presence_penalty):
        counts = torch.bincount(torch.tensor(output), minlength=logits.numel()).float()
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return logits


def sample(logits: torch.Tensor, params: SamplingParams,
           generator: torch.Generator | None = None) -> int:
    """logits: (vocab,) for one sequence. Returns the chosen token id."""
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < params.top_p  # always keeps the top token
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability and the `k` most likely (id, logprob), best first;
    None for a prompt's first token (nothing predicts it)."""
    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] | None


def prompt_logprobs(prompt: list[int], chosen: torch.Tensor, top_ids: torch.Tensor | None,
                    top_values: torch.Tensor | None) -> list[TokenLogprob]:
    """One entry per prompt token from the head's per-position results (see workers.run):
    chosen (n-1,) the logprob of each next prompt token; top_* (n-1, k) or None."""
    out = [TokenLogprob(prompt[0], None, None)]
    tops = (zip(top_ids.tolist(), top_values.tolist(), strict=True) if top_ids is not None
            else [((), ())] * len(chosen))
    for token, lp, (ids, vals) in zip(prompt[1:], chosen.tolist(), tops, strict=True):
        out.append(TokenLogprob(token, lp, tuple(zip(ids, vals, strict=True))))
    return out


def token_logprob(logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
    """From the model's logits (vocab,), before penalties and temperature (vLLM's default
    `raw_logprobs`): log-softmax in float32."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(lp, k) if k else None
    pairs = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else ()
    return TokenLogprob(token, float(lp[token]), pairs)
