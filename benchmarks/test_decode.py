"""Batch-1 greedy decode: blockllm (its reference chain, and the serving engine with segments)
vs transformers generate(), same weights; and this machine's memory read bandwidth, so that
each time can be read against the bound of reading every weight once per token.

Run with `make bench`; all sides run in the same session, so their ratios are what to read
(see benchmarks/summarize.py), not the absolute times.
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
    return (*_models(src), ids, src)


@pytest.fixture(scope="module")
def small():
    from tests.conftest import tiny_source
    src = tiny_source(seed=0, hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=2, vocab_size=4096)
    return (*_models(src), list(range(10, 30)), src)


def _engine(src, tmp):
    """The serving engine on a zoo of `src` alone: embed, one segment of every layer, head."""
    from blockllm.runtime.config import EngineConfig
    from blockllm.runtime.engine import Engine
    from blockllm.zoo.ingest import add_source
    from blockllm.zoo.store import Zoo
    zoo = Zoo(tmp / "zoo")
    add_source(zoo, src, "m")
    eng = Engine(zoo, ["m"], EngineConfig())
    eng.warm_up()
    return eng


def _bench(benchmark, models, impl: str, rounds: int, tmp) -> None:
    ours, ref, ids, src = models
    want = hf_greedy(ref, ids, NEW_TOKENS)
    if impl == "engine":
        eng = _engine(src, tmp)
        fn = lambda: eng.generate("m", [ids], NEW_TOKENS, stop_ids=frozenset())[0]  # noqa: E731
    elif impl == "blockllm":
        fn = lambda: ours.generate([ids], NEW_TOKENS, stop_ids=())[0]  # noqa: E731
    else:
        fn = lambda: hf_greedy(ref, ids, NEW_TOKENS)  # noqa: E731
    assert fn() == want
    benchmark.extra_info["weight_bytes"] = sum(t.numel() * t.element_size()
                                               for t in src.tensors.values())
    benchmark.extra_info["new_tokens"] = NEW_TOKENS
    with torch.inference_mode():
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)


IMPLS = ["blockllm", "engine", "transformers"]


@pytest.mark.benchmark(group="decode-smollm2-135m")
@pytest.mark.parametrize("impl", IMPLS)
def test_decode_smollm2(benchmark, smollm2, impl, tmp_path):
    _bench(benchmark, smollm2, impl, 5, tmp_path)


@pytest.mark.benchmark(group="decode-small-8L-256d")
@pytest.mark.parametrize("impl", IMPLS)
def test_decode_small(benchmark, small, impl, tmp_path):
    _bench(benchmark, small, impl, 10, tmp_path)


@pytest.mark.benchmark(group="read-bandwidth")
def test_read_bandwidth(benchmark):
    """Seconds to read 1 GiB once (a sum: one pass over memory, with torch's threads): the
    bound for decoding is weight bytes / this bandwidth per token."""
    x = torch.ones(1 << 28)  # 1 GiB of float32, far beyond the caches
    benchmark.extra_info["bytes"] = x.numel() * x.element_size()
    benchmark.pedantic(lambda: x.sum(), rounds=10, warmup_rounds=2)
