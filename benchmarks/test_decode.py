"""Batch-1 greedy decode: blockllm's block chain vs transformers generate(), same weights.

Run with `make bench`; both sides run in the same session, interleaved by pytest-benchmark, so
their ratio is what to read (see benchmarks/summarize.py), not the absolute times.
"""

import pytest
import torch

from baselines.hf_reference import hf_greedy, hf_model
from blockllm.models.chain import ChainModel
from blockllm.zoo.partition import partition

NEW_TOKENS = 32
PROMPT = "The history of the printing press begins"


def _models(src):
    blocks, chain = partition(src)
    byid = {b.id: b for b in blocks}
    ours = ChainModel(src.config, [(byid[e.block], None) for e in chain])
    return ours, hf_model(src)


@pytest.fixture(scope="module")
def smollm2():
    from blockllm.loaders import load_source
    src = load_source("embedded")
    ids = src.load_tokenizer().encode(PROMPT)
    return (*_models(src), ids)


@pytest.fixture(scope="module")
def small():
    from tests.conftest import tiny_source
    src = tiny_source(seed=0, hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=2, vocab_size=4096)
    return (*_models(src), list(range(10, 30)))


def _bench(benchmark, models, impl: str, rounds: int) -> None:
    ours, ref, ids = models
    assert ours.generate([ids], NEW_TOKENS, stop_ids=())[0] == hf_greedy(ref, ids, NEW_TOKENS)
    fn = (lambda: ours.generate([ids], NEW_TOKENS, stop_ids=())) if impl == "blockllm" else (
        lambda: hf_greedy(ref, ids, NEW_TOKENS))
    with torch.inference_mode():
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)


@pytest.mark.benchmark(group="decode-smollm2-135m")
@pytest.mark.parametrize("impl", ["blockllm", "transformers"])
def test_decode_smollm2(benchmark, smollm2, impl):
    _bench(benchmark, smollm2, impl, rounds=5)


@pytest.mark.benchmark(group="decode-small-8L-256d")
@pytest.mark.parametrize("impl", ["blockllm", "transformers"])
def test_decode_small(benchmark, small, impl):
    _bench(benchmark, small, impl, rounds=10)
