"""Sampling: greedy, top-k, top-p, seeds, and parameter validation."""

import pytest
import torch

from blockllm.models.sampling import SamplingParams, sample


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
