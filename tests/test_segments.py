"""Segments: decoder runs that the same chains cross, run as one block (runtime/segments.py).
Exact: which entries fuse, for made-up chains; then the engine's calls per token."""

import pytest

from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.segments import Segment, segment_chains
from blockllm.zoo.partition import ChainEntry as E
from tests.conftest import ENGINE_N as N
from tests.conftest import ENGINE_PROMPTS as PROMPTS
from tests.conftest import check_tokens

KIND = {"emb": "embed", "head": "head"}


def _seg(chains, **kw):
    return segment_chains(chains, lambda b: KIND.get(b, "decoder"), **kw)


def _shape(chain):
    return [e.blocks if isinstance(e, Segment) else e.block for e in chain]


def test_shared_runs_fuse_and_private_runs_fuse():
    """base + two top-2 partial fine-tunes + a LoRA variant of base: the shared bottom is one
    segment for all four, each fine-tune's top its own, base and LoRA share base's top."""
    base = [E("emb"), *(E(f"L{i}") for i in range(6)), E("head")]
    ft = base[:5] + [E("a4"), E("a5")] + base[-1:]
    ft2 = base[:5] + [E("b4"), E("b5")] + base[-1:]
    lora = [base[0], *(E(e.block, f"A{i}") for i, e in enumerate(base[1:-1])), base[-1]]
    out = _seg({"base": base, "ft": ft, "ft2": ft2, "lora": lora})
    bottom = ("L0", "L1", "L2", "L3")
    assert _shape(out["base"]) == ["emb", bottom, ("L4", "L5"), "head"]
    assert _shape(out["ft"]) == ["emb", bottom, ("a4", "a5"), "head"]
    assert _shape(out["ft2"]) == ["emb", bottom, ("b4", "b5"), "head"]
    assert _shape(out["lora"]) == _shape(out["base"])
    assert out["lora"][1].block == out["base"][1].block, "one key: one queue and KV pool"
    assert out["lora"][1].adapter == ("A0", "A1", "A2", "A3") and out["base"][1].adapter is None


def test_a_block_shared_by_a_subset_splits_the_run():
    """x shares L1 only with y: L0 | L1 | L2 for x, whatever comes after."""
    x = [E("emb"), E("L0"), E("L1"), E("L2"), E("head")]
    y = [E("emb"), E("M0"), E("L1"), E("M2"), E("head")]
    out = _seg({"x": x, "y": y})
    assert _shape(out["x"]) == ["emb", ("L0",), ("L1",), ("L2",), "head"]
    alone = _seg({"x": x, "y": y}, group=lambda n: n)  # no sharing: each model on its own
    assert _shape(alone["x"]) == ["emb", ("L0", "L1", "L2"), "head"]


def test_segments_are_cut_to_fit_the_budget_alike_in_every_chain():
    base = [E("emb"), *(E(f"L{i}") for i in range(5)), E("head")]
    ft = base[:4] + [E("a3"), E("a4")] + base[-1:]
    out = _seg({"base": base, "ft": ft}, nbytes=lambda b: 10, max_bytes=25)
    assert _shape(out["base"]) == ["emb", ("L0", "L1"), ("L2",), ("L3", "L4"), "head"]
    assert _shape(out["ft"]) == ["emb", ("L0", "L1"), ("L2",), ("a3", "a4"), "head"]


@pytest.mark.parametrize("cfg", [EngineConfig(), EngineConfig(segments=False)],
                         ids=["segments", "one-call-per-block"])
def test_engine_calls_per_token_at_most_its_segments(zoo4, cfg):
    """Same tokens either way; with segments a pass of base costs 3 calls (embed, its 3
    layers, head) instead of 5, counted by the engine (and /metrics)."""
    zoo, ref = zoo4
    eng = Engine(zoo, ["base"], cfg)
    reqs = [("base", i, eng.submit("base", p, max_tokens=N, stop_ids=frozenset()))
            for i, p in enumerate(PROMPTS)]
    while eng.has_work():
        eng.step()
    check_tokens(eng, reqs, ref)
    calls, tokens = eng.counters["block_calls"], eng.counters["tokens"]
    assert tokens == N * len(PROMPTS)
    per_pass = len(eng.chains["base"])
    assert per_pass == (3 if cfg.segments else 5)
    assert calls / tokens <= per_pass  # batching makes it less: requests share calls


def test_warm_up_measures_each_segment_shape_and_on_demand_ones_scale_a_measured_curve(
        zoo4, monkeypatch):
    """Warm-up, where a profile delays no request, measures every resident segment shape (each
    layer count). Without it, segments of other layer counts take the first measured curve
    scaled by their layers, so only one profile runs in the serving path."""
    from blockllm.runtime.batch_policy import batch_limit
    from blockllm.runtime.hosts import LocalHost
    zoo, ref = zoo4
    profiled, profile = [], LocalHost.profile
    monkeypatch.setattr(LocalHost, "profile",
                        lambda self, key: profiled.append(key) or profile(self, key))

    def layers_of(eng):
        return {k: eng.info[eng.entry_of[k][0].block].signature["n_layers"]
                for k in eng.sched.kv.tables}
    warm = Engine(zoo, zoo.models(), EngineConfig())
    warm.warm_up()
    layers = layers_of(warm)
    assert len(set(layers.values())) > 1, "the zoo's segments have several layer counts"
    assert sorted(layers[k] for k in profiled) == sorted(set(layers.values()))
    assert set(warm.weights.limits) >= set(layers), "every segment's limit known before serving"
    profiled.clear()
    eng = Engine(zoo, zoo.models(), EngineConfig())
    reqs = [(m, 0, eng.submit(m, PROMPTS[0], max_tokens=N, stop_ids=frozenset()))
            for m in zoo.models()]
    while eng.has_work():
        eng.step()
    check_tokens(eng, reqs, ref)
    layers = layers_of(eng)
    [measured] = profiled
    [(n, curve)] = eng.weights._measured.values()
    assert n == layers[measured]
    for k, n_k in layers.items():
        scaled = [(t, s * n_k / n) for t, s in curve]
        assert eng.weights.limits[k] == batch_limit(scaled)
