"""Log-probabilities a request asks for: of each sampled token (`logprobs`) and of each prompt
token (`prompt_logprobs`, for echo). Computed on the device from the model's raw logits, before
penalties and temperature (vLLM's default `raw_logprobs`); only ids and values come back."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability and the `k` most likely (id, logprob), best first;
    None for a prompt's first token (nothing predicts it)."""
    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] | None


def logprobs_of(logits: torch.Tensor, chosen: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """For rows of logits (n, vocab) and each row's chosen id (n,): the chosen ids' logprobs
    (n,) and the top k ids and values (n, k) (None when k is 0), on the host, in float32."""
    lp = torch.log_softmax(logits.float(), -1)
    mine = lp.gather(1, chosen.to(lp.device)[:, None])[:, 0].cpu()
    if not k:
        return mine, None, None
    top = torch.topk(lp, k)
    return mine, top.indices.cpu(), top.values.cpu()


def token_logprobs(tokens: list[int], chosen: torch.Tensor, top_ids: torch.Tensor | None,
                   top_values: torch.Tensor | None, ks: list[int]) -> list[TokenLogprob]:
    """One TokenLogprob per row from `logprobs_of` computed with k = max(ks): row i keeps the
    top ks[i]."""
    ids = top_ids.tolist() if top_ids is not None else [[]] * len(tokens)
    vals = top_values.tolist() if top_values is not None else [[]] * len(tokens)
    return [TokenLogprob(t, lp, tuple(zip(i[:k], v[:k], strict=True)))
            for t, lp, i, v, k in zip(tokens, chosen.tolist(), ids, vals, ks, strict=True)]


def prompt_logprobs(prompt: list[int], chosen: torch.Tensor, top_ids: torch.Tensor | None,
                    top_values: torch.Tensor | None) -> list[TokenLogprob]:
    """One entry per prompt token from the head's per-position `logprobs_of` (see
    workers.run): chosen (n-1,) the logprob of each next prompt token; top_* (n-1, k) or
    None."""
    k = 0 if top_ids is None else top_ids.shape[1]
    rest = token_logprobs(prompt[1:], chosen, top_ids, top_values, [k] * len(chosen))
    return [TokenLogprob(prompt[0], None, None), *rest]
