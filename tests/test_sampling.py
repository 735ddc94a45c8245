"""Sampling on the device: greedy, top-k, top-p, stateless seeds, the logit processors, raw
logprobs, a batch mixing all of them, and parameter validation."""

import pytest
import torch

from blockllm.models.logprobs import TokenLogprob
from blockllm.models.sampling import GREEDY, Pick, SamplingParams, pick

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def draws(params: SamplingParams, n: int, logits=None) -> list[int]:
    """n rows of the same logits in one batch: n independent draws."""
    logits = torch.log(PROBS) if logits is None else logits
    return pick(logits.expand(n, -1).clone(), [Pick(params)] * n)


def test_greedy_and_top_k_1_are_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.9, -1.0]])
    assert pick(logits, [GREEDY]) == [1]
    assert pick(logits.clone(), [Pick(SamplingParams(temperature=5.0, top_k=1))]) == [1]


def test_draws_follow_the_distribution_within_top_k_and_top_p():
    torch.manual_seed(0)
    n = 4000
    allk = draws(SamplingParams(temperature=1.0), n)
    freq = torch.bincount(torch.tensor(allk), minlength=4).float() / n
    # 4 sigma of a binomial proportion at n=4000 is at most 0.032
    assert torch.allclose(freq, PROBS, atol=0.032), freq
    assert set(draws(SamplingParams(temperature=1.0, top_k=2), 400)) == {0, 1}
    # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.7), 400)) == {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.5), 100)) == {0}
    # temperature 0.5 squares the odds: 0.5^2 : 0.3^2 : ... normalised
    hot = torch.bincount(torch.tensor(draws(SamplingParams(temperature=0.5), n)),
                         minlength=4).float() / n
    want = PROBS ** 2 / (PROBS ** 2).sum()
    assert torch.allclose(hot, want, atol=0.032), hot


def test_a_nucleus_from_a_partial_top_n_equals_the_full_sort():
    """Top-p reads a top-256, then a top-4096, and sorts the whole row only past those: the
    tokens equal a full-sort nucleus sampler's at the same uniform draws, in each tier."""
    from blockllm.models.sampling import _uniform
    vocab = 5000
    i = torch.arange(vocab, dtype=torch.float32)
    logits = torch.stack([-0.01 * i, -0.001 * i, -0.001 * i])
    logits[:, 0] += 6.0
    # nuclei of about 70 tokens (the top-256 holds it), 2,560 (top-4096), 4,780 (a full sort)
    params = [SamplingParams(temperature=1.0, top_p=p, seed=5) for p in (0.9, 0.95, 0.999)]
    for step in range(40):
        picks = [Pick(p, step) for p in params]
        want = []
        for row, p in zip(logits, picks, strict=True):
            v, order = torch.softmax(row, -1).sort(descending=True)
            kept = v * ((v.cumsum(0) - v) < p.params.top_p)
            cdf = torch.zeros(vocab).scatter_(0, order, kept).double().cumsum(0)  # id order
            u = torch.tensor([_uniform(p) * float(cdf[-1])], dtype=torch.float64)
            want.append(int(torch.searchsorted(cdf, u, right=True)))
        assert pick(logits.clone(), picks) == want, step
    # a row without top-k or top-p draws from its whole distribution beside those that have
    plain = [Pick(SamplingParams(temperature=1.0, seed=6), s) for s in range(40)]
    topk = Pick(SamplingParams(temperature=1.0, top_k=3, seed=6))
    flat = torch.zeros(41, vocab)
    assert pick(flat.clone(), plain + [topk])[:40] == [pick(flat[:1].clone(), [p])[0]
                                                       for p in plain]
    assert max(pick(flat.clone(), plain + [topk])[:40]) > 256


def test_ties_at_the_cut_stay_and_a_seeded_draw_does_not_depend_on_its_batch():
    """Top-k and top-p keep by value: every token as likely as the k-th (or as the nucleus's
    last) stays, whatever order a sort gives ties, so a seeded row draws the same tokens alone
    and beside a row whose wider top-k makes the whole batch read a wider top-n. bf16 logits
    tie often."""
    logits = (torch.randn(1, 50000, generator=torch.Generator().manual_seed(0)) * 2).to(
        torch.bfloat16).float()
    probs = torch.softmax(logits[0], -1)
    v = probs.sort(descending=True).values
    k = next(k for k in range(5, 200) if v[k - 1] == v[k])  # a tie across the k-th place
    ties = int((probs == v[k - 1]).sum())
    top_k = SamplingParams(temperature=1.0, top_k=k, seed=3)
    cut = float(v[: k - 1].sum() / v.sum()) + 1e-7  # a nucleus whose last token is tied
    top_p = SamplingParams(temperature=1.0, top_p=cut, seed=4)
    wide = Pick(SamplingParams(temperature=1.0, top_k=3000, seed=5))
    kept = set()
    for step in range(200):
        for params in (top_k, top_p):
            alone = pick(logits.clone(), [Pick(params, step)])[0]
            assert pick(logits.expand(2, -1).clone(), [wide, Pick(params, step)])[1] == alone
            assert probs[alone] >= v[k - 1]
            kept.add(alone)
    assert len({i for i in kept if probs[i] == v[k - 1]}) == ties > 1, "every tie can be drawn"


def test_top_k_past_the_vocabulary_keeps_all_and_a_tiny_temperature_is_argmax():
    flat = torch.zeros(1, 1000)
    for step in range(30):
        seeded = [Pick(SamplingParams(temperature=1.0, top_k=k, seed=2), step)
                  for k in (0, 1000, 1001)]
        assert len({pick(flat.clone(), [p])[0] for p in seeded}) == 1
    logits = torch.randn(1, 1000, generator=torch.Generator().manual_seed(0)) * 3
    for t in (1e-6, 1e-39, 1e-46):
        assert pick(logits.clone(), [Pick(SamplingParams(temperature=t, top_k=5))]) == \
            [int(logits.argmax())]


def test_seeded_draws_are_a_function_of_seed_and_step_alone():
    """A seeded row's token depends on (seed, step, its logits): not on the batch it is in,
    its position there or the global generator; other steps and seeds draw differently."""
    flat = torch.zeros(1, 1000)  # uniform over 1000 tokens: collisions are rare
    p = SamplingParams(temperature=1.0, seed=11)
    alone = [pick(flat.clone(), [Pick(p, step)])[0] for step in range(8)]
    torch.manual_seed(123)
    batch = pick(torch.zeros(10, 1000), [Pick(SamplingParams(temperature=1.0))] * 2 +
                 [Pick(p, step) for step in range(8)])
    assert batch[2:] == alone
    assert len(set(alone)) >= 6  # the steps draw differently
    other = [pick(flat.clone(), [Pick(SamplingParams(temperature=1.0, seed=12), s)])[0]
             for s in range(8)]
    assert other != alone


def test_penalties_follow_the_openai_formula_and_banned_ids_are_never_picked():
    """OpenAI: mu[j] - c[j] * frequency - (c[j] > 0) * presence over the output's counts c;
    vLLM/transformers repetition: a seen token's logit / r if positive, * r if negative."""
    logits = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])
    # shaped: [1.0, -2.75, 0.5, 1.75, 2.0] -> argmax 4 (bias), then 3 with 4 banned
    p = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25, logit_bias=((4, 2.0),))
    assert pick(logits[None].clone(), [Pick(p, 3, (), (0,), (3, 3, 1))]) == [4]
    assert pick(logits[None].clone(), [Pick(p, 3, (4,), (0,), (3, 3, 1))]) == [3]
    # repetition 4 on seen tokens: 3.0 -> 0.75; with 0 seen too, 1.0 -> 0.25 and 3 still wins
    rep = SamplingParams(repetition_penalty=4.0)
    assert pick(logits[None].clone(), [Pick(rep, 1, (), (0,), (3,))]) == [3]
    assert pick(logits[None].clone(), [Pick(rep, 1, (), (2,), (3,))]) == [0]
    # sampling never draws a banned id
    banned = [Pick(SamplingParams(temperature=1.0), 0, (0, 1, 2))] * 50
    assert set(pick(torch.log(PROBS).expand(50, -1).clone(), banned)) == {3}


def test_logprobs_are_of_the_raw_logits_and_a_mixed_batch_equals_rows_alone():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    rows = [Pick(SamplingParams(logprobs=3)),
            Pick(SamplingParams(temperature=0.8, top_p=0.9, seed=4, logprobs=0), 2),
            GREEDY,
            Pick(SamplingParams(temperature=1.3, top_k=5, seed=9), 7),
            Pick(SamplingParams(presence_penalty=2.0, logprobs=2), 1, (), (1,), (int(
                logits[4].argmax()),)),
            Pick(SamplingParams(), 0, (int(logits[5].argmax()),))]
    together = pick(logits.clone(), rows)
    alone = [pick(logits[b: b + 1].clone(), [p])[0] for b, p in enumerate(rows)]
    assert together == alone
    lp = torch.log_softmax(logits, -1)
    for b in (0, 1, 4):
        out = together[b]
        assert isinstance(out, TokenLogprob)
        assert out.logprob == pytest.approx(lp[b, out.token].item(), abs=1e-5)
        k = rows[b].params.logprobs
        assert [i for i, _ in out.top] == (lp[b].topk(k).indices.tolist() if k else [])
    assert together[0].token == int(logits[0].argmax())
    assert together[4].token != int(logits[4].argmax())  # presence penalty moved it
    assert together[5] != int(logits[5].argmax())  # banned
    assert isinstance(together[2], int) and isinstance(together[3], int)


def test_bf16_logits_and_extreme_temperatures_give_valid_tokens():
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    for t in (1e-4, 1e3):
        ids = pick(logits.clone(), [Pick(SamplingParams(temperature=t, seed=1))] * 4)
        assert all(0 <= i < 300 for i in ids)
    cold = pick(logits.clone(), [Pick(SamplingParams(temperature=1e-4, seed=1))] * 4)
    # near 0 it is argmax (bf16 has ties: any maximal token)
    assert [float(logits[b, i]) for b, i in enumerate(cold)] == logits.float().amax(-1).tolist()


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                dict(top_k=-2), dict(repetition_penalty=0)])
def test_invalid_parameters_are_refused(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)
