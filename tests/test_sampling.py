"""Sampling: greedy, top-k, top-p, seeds, and parameter validation."""

import pytest
import torch

from blockllm.models.sampling import SamplingParams, process, sample, token_logprob


def test_greedy_and_top_k_1_are_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingParams()) == 1
    assert sample(logits, SamplingParams(temperature=5.0, top_k=1)) == 1


def test_seeded_sampling_is_reproducible_and_respects_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = SamplingParams(temperature=1.0, seed=3)
    draws = [sample(logits, p, torch.Generator().manual_seed(3)) for _ in range(3)]
    assert len(set(draws)) == 1
    g = torch.Generator().manual_seed(0)
    top2 = {sample(logits, SamplingParams(temperature=1.0, top_k=2), g) for _ in range(200)}
    assert top2 == {0, 1}
    nucleus = {sample(logits, SamplingParams(temperature=1.0, top_p=0.7), g) for _ in range(200)}
    assert nucleus == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
    allk = {sample(logits, SamplingParams(temperature=1.0), g) for _ in range(400)}
    assert allk == {0, 1, 2, 3}


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                dict(top_k=-2)])
def test_invalid_parameters_are_refused(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


def test_penalties_follow_the_openai_formula_and_logprobs_the_raw_logits():
    """OpenAI: mu[j] - c[j] * frequency - (c[j] > 0) * presence over the output's counts c;
    vLLM/transformers repetition: a seen token's logit / r if positive, * r if negative."""
    logits = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])
    p = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25, logit_bias=((4, 2.0),))
    out = process(logits, p, prompt=[0], output=[3, 3, 1])
    torch.testing.assert_close(out, torch.tensor([1.0, -2.75, 0.5, 1.75, 2.0]))
    r = process(logits, SamplingParams(repetition_penalty=2.0), prompt=[0], output=[1])
    torch.testing.assert_close(r, torch.tensor([0.5, -4.0, 0.5, 3.0, 0.0]))
    assert process(logits, SamplingParams(), [0], [1]) is logits  # nothing to do: no copy
    assert SamplingParams(logprobs=0).on_device and SamplingParams().on_device
    assert not SamplingParams(presence_penalty=1).on_device
    assert not SamplingParams(temperature=1, logprobs=1).on_device
    lp = token_logprob(logits, 2, k=2)
    want = torch.log_softmax(logits, -1)
    assert lp.logprob == pytest.approx(want[2].item())
    assert [i for i, _ in lp.top] == [3, 0] and lp.top[0][1] == pytest.approx(want[3].item())
