"""Our block model vs transformers on tiny random configs: logits and greedy tokens."""

import pytest
import torch

from baselines.hf_reference import hf_greedy, hf_model
from blockllm.models.chain import ChainModel
from blockllm.zoo.partition import partition
from tests.conftest import TINY_VARIANTS, tiny_source


def chain_of(src, layers_per_block=1, **kw):
    blocks, chain = partition(src, layers_per_block)
    byid = {b.id: b for b in blocks}
    return ChainModel(src.config, [(byid[e.block], byid.get(e.adapter)) for e in chain], **kw)


PROMPTS = [[5, 17, 200, 3, 44, 90, 12], [250, 9], list(range(3, 40))]


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
@pytest.mark.parametrize("layers_per_block", [1, 2])
def test_prefill_logits_match_transformers(variant, layers_per_block):
    src = tiny_source(seed=3, **TINY_VARIANTS[variant])
    ours = chain_of(src, layers_per_block)
    ref = hf_model(src)
    for p in PROMPTS:
        with torch.no_grad():
            theirs = ref(torch.tensor([p])).logits[0]
        torch.testing.assert_close(ours.prompt_logits(p), theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_greedy_tokens_match_transformers_generate(variant):
    src = tiny_source(seed=4, **TINY_VARIANTS[variant])
    ours = chain_of(src)
    ref = hf_model(src)
    for p in PROMPTS:
        assert ours.generate([p], 32, stop_ids=())[0] == hf_greedy(ref, p, 32)


def test_batched_generation_equals_one_at_a_time():
    """Sequences of different lengths decoded together (padded masks) match solo runs."""
    src = tiny_source(seed=5)
    ours = chain_of(src, page_size=4)
    solo = [ours.generate([p], 20, stop_ids=())[0] for p in PROMPTS]
    assert ours.generate(PROMPTS, 20, stop_ids=()) == solo


def test_decode_logits_match_full_recompute():
    """Logits from the paged cache equal a fresh prefill of the same tokens."""
    src = tiny_source(seed=6, **TINY_VARIANTS["llama3-rope"])
    ours = chain_of(src, page_size=2)
    p = PROMPTS[0]
    ours.reserve(64)
    ours.step([0], [p[:3]])
    step = ours.step([0], [p[3:5]], all_logits=True)  # chunked prefill onto cached KV
    full = chain_of(src).prompt_logits(p[:5])
    torch.testing.assert_close(step, full[3:5], rtol=1e-5, atol=1e-5)


def test_stop_and_context_checks():
    from blockllm.errors import UserError
    src = tiny_source(seed=7)
    ours = chain_of(src)
    out = ours.generate([PROMPTS[0]], 10, stop_ids=())[0]
    first = out[0]
    assert ours.generate([PROMPTS[0]], 10, stop_ids=(first,))[0] == [first]
    with pytest.raises(UserError, match="context length"):
        ours.generate([[3] * 500], 20)
    with pytest.raises(UserError, match="empty"):
        ours.generate([[]], 5)
