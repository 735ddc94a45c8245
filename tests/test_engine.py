"""The block-chain engine: exact outputs under every mechanism setting, sharing, preemption.

BLOCKLLM_TEST_DEVICE=cuda runs the single-device engines of these tests on the GPU (the
reference stays on the CPU): how a GPU session checks the CUDA path."""

import os
from dataclasses import replace

import pytest

from blockllm.runtime.batch_policy import batch_limit
from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.kv_manager import KVManager, sharing_degree
from blockllm.runtime.residency import OverBudget, Residency
from blockllm.zoo.ingest import add_source
from blockllm.zoo.store import Zoo
from tests.conftest import ENGINE_N as N
from tests.conftest import ENGINE_PROMPTS as PROMPTS
from tests.conftest import kv_layers, tiny_source

DEVICE = os.environ.get("BLOCKLLM_TEST_DEVICE", "cpu")


def _run_all(zoo, cfg):
    if cfg.devices == 1:
        cfg = replace(cfg, device=DEVICE)
    eng = Engine(zoo, zoo.models(), cfg)
    reqs = [(m, i, eng.submit(m, p, max_tokens=N, stop_ids=frozenset()))
            for i, p in enumerate(PROMPTS) for m in zoo.models()]  # interleaved: mixed batches
    steps = 0
    while eng.has_work():
        eng.step()
        steps += 1
        assert steps < 20000, "no progress"
    return eng, reqs


PAGE = 2 * 16 * 2 * 16 * 4  # bytes of one KV page of the tiny config (fp32)


@pytest.mark.parametrize("cfg", [
    EngineConfig(),
    EngineConfig(share_blocks=False),
    EngineConfig(batch_tokens=3),
    EngineConfig(kv_budget=12 * 3 * PAGE),  # pools too small: preemption must kick in
    EngineConfig(kv_budget=12 * 3 * PAGE, coordinate_kv=False),
    EngineConfig(memory_budget=400_000),  # not every block fits: LRU eviction, reloads
    EngineConfig(share_blocks=False, residency_unit="model", memory_budget=600_000),
    EngineConfig(prefill_chunk=2),  # prompts in chunks of 2 tokens, decodes batched first
    EngineConfig(prefill_chunk=2, kv_budget=12 * 3 * PAGE),  # chunks under preemption
    EngineConfig(prefill_chunk=2, kv_budget=12 * 3 * PAGE, coordinate_kv=False),
    EngineConfig(cuda_graphs="uncaptured"),  # decode steps through the graphs' buffers
    EngineConfig(cuda_graphs="uncaptured", kv_budget=12 * 3 * PAGE),  # and preemption
    EngineConfig(cuda_graphs="off"),  # on a GPU: eager (the default captures)
], ids=["default", "no-sharing", "batch3", "tiny-kv", "tiny-kv-uncoordinated", "tiny-memory",
        "per-model-baseline", "chunked-prefill", "chunked-tiny-kv", "chunked-uncoordinated",
        "graphs-uncaptured", "graphs-tiny-kv", "graphs-off"])
def test_engine_outputs_equal_the_reference_for_every_model(zoo4, cfg):
    zoo, ref = zoo4
    eng, reqs = _run_all(zoo, cfg)
    for m, i, r in reqs:
        assert r.finish_reason == "length"
        assert r.output == ref[m][i], (m, i)
    if cfg.kv_budget < 10_000_000:
        assert eng.counters["preemptions"] > 0, "the small pools were meant to force preemption"
    if not cfg.coordinate_kv:
        assert eng.counters["deadlocks"] > 0
    elif cfg.kv_budget < 10_000_000:
        assert eng.counters["deadlocks"] == 0, "coordinated KV never deadlocks"
    if cfg.memory_budget < 1_000_000:
        assert sum(m.evictions for m in eng.weights.memory) > 0
        assert all(m.used <= cfg.memory_budget for m in eng.weights.memory)
    for t in eng.sched.kv.tables.values():
        assert t.free_pages == t.num_pages, "every page is returned"
    graph_steps = sum(w.graphs.steps for h in eng.hosts for w in h.workers.values()
                      if w.graphs is not None)
    graphs_on = cfg.cuda_graphs == "uncaptured" or cfg.cuda_graphs == "auto" and \
        eng.hosts[0].device.type == "cuda"
    if cfg.memory_budget >= 1_000_000:  # (evicted workers take their graphs' counts along)
        assert (graph_steps > 0) == graphs_on, "decode steps ran through the graphs' path"


def test_shared_blocks_batch_requests_of_several_models(zoo4):
    zoo, _ = zoo4
    eng, _ = _run_all(zoo, EngineConfig())
    assert eng.counters["steps"] < sum(len(zoo.chain(m)) for m in zoo.models()) * N * len(PROMPTS)
    embeds = {eng.key(m, eng.chains[m][0]) for m in ("base", "ft", "lora")}
    assert len(embeds) == 1 and eng.hosts[0].has(embeds.pop()), \
        "base, ft and lora share one embedding worker"
    shared = Engine(zoo, zoo.models(), EngineConfig())
    alone = Engine(zoo, zoo.models(), EngineConfig(share_blocks=False))
    assert kv_layers(shared) == 3 + 1 + 3 < kv_layers(alone) == 4 * 3


def test_stop_tokens_abort_and_bad_requests(zoo4):
    from blockllm.errors import UserError
    zoo, ref = zoo4
    eng = Engine(zoo, ["base"], EngineConfig())
    first = ref["base"][0][0]
    r = eng.submit("base", PROMPTS[0], max_tokens=N, stop_ids=frozenset({first}))
    keep = eng.submit("base", PROMPTS[1], max_tokens=N, stop_ids=frozenset())
    gone = eng.submit("base", PROMPTS[2], max_tokens=N, stop_ids=frozenset())
    eng.step()
    eng.abort(gone)
    while eng.has_work():
        eng.step()
    assert r.output == [first] and r.finish_reason == "stop"
    assert gone.finish_reason == "abort" and keep.output == ref["base"][1]
    with pytest.raises(UserError, match="not served"):
        eng.submit("ft", [1, 2], max_tokens=2)
    with pytest.raises(UserError, match="context length"):
        eng.submit("base", [1] * 500, max_tokens=20)
    with pytest.raises(UserError, match="empty"):
        eng.submit("base", [], max_tokens=2)


def test_kv_manager_reserves_all_or_nothing():
    kv = KVManager({"a": 2, "b": 1}, page_size=4)
    assert kv.reserve(1, ["a", "b"], 4)
    assert not kv.reserve(2, ["a", "b"], 1), "b is full"
    assert kv.used_pages("a") == 1 and kv.tables["a"].length(2) == 0
    assert kv.shortest(["a", "b"], 2, 1) == ["b"] and kv.holders("b") == [1]
    assert kv.reserve(2, ["a"], 4)
    kv.free(1)
    assert kv.used_pages("b") == 0 and kv.used_pages("a") == 1


def test_batch_limit_policy():
    curve = [(1, 0.010), (8, 0.012), (32, 0.020), (128, 0.070)]
    assert batch_limit(curve, target_s=0.015) == 8
    assert batch_limit(curve, target_s=0.001) == 1, "never below the smallest batch"
    assert batch_limit(curve, target_s=1.0) == 128
    # throughputs 100, 667, 1600, 1829 tokens/s: 1600 is 87% of the best
    assert batch_limit(curve) == 128
    assert batch_limit(curve, knee_fraction=0.85) == 32
    assert batch_limit(curve, knee_fraction=0.3) == 8


def test_residency_lru_plans():
    r = Residency(100)
    for k in ("a", "b", "c"):
        r.add(k, 30)
    r.touch(["a"])  # order now b, c, a
    load, evict = r.plan({"d": 30})
    assert load == ["d"] and evict == ["b"]
    load, evict = r.plan({"d": 50}, pinned=["b"])
    assert evict == ["c", "a"]
    with pytest.raises(OverBudget):
        r.plan({"e": 101})


def test_engine_serves_measured_equivalent_chains_within_budget(tmp_path):
    """With equivalence on, a near-copy's unique block is swapped for the base's (measured,
    within budget), so the near-copy's requests batch with the base's in that block."""
    from blockllm.zoo.calibration import calibration_set
    from blockllm.zoo.equivalence import evaluate_model
    from blockllm.zoo.evidence import save_evidence
    from blockllm.zoo.substitution import measure_options
    zoo = Zoo(tmp_path / "zoo")
    base = tiny_source(seed=0)
    add_source(zoo, base, "base")
    t = {k: (v * 1.0005 if k.startswith("model.layers.1.") else v) for k, v in base.tensors.items()}
    add_source(zoo, type(base)(base.config, t, "near", tokenizer_loader=base.tokenizer_loader),
               "near")
    calib = calibration_set(zoo.tokenizer("near"), n_text=1, n_task=1, seq_len=16)
    save_evidence(zoo, evaluate_model(zoo, "near", calib, False), calib.hash)
    opts = {o.label: o for o in measure_options(zoo, "near", calib.hash, 4, (0.05,), False)}
    assert opts["t=0.05"].chain == tuple(zoo.chain("base"))
    plain = Engine(zoo, ["base", "near"], EngineConfig())
    assert _blocks(plain.submit("near", [5, 6], max_tokens=2).chain) == zoo.chain("near")
    eng = Engine(zoo, ["base", "near"], EngineConfig(use_equivalence=True))
    r = eng.submit("near", [5, 6], max_tokens=2)
    assert _blocks(r.chain) == zoo.chain("base") and r.chain == eng.chains["base"]
    from blockllm.zoo.evidence import set_budget
    set_budget(zoo, "near", -0.0)
    if opts["t=0.05"].drop_points > 0:  # a zero budget forbids any measured drop
        assert _blocks(Engine(zoo, ["near"], EngineConfig(use_equivalence=True)).submit(
            "near", [5], max_tokens=1).chain) == zoo.chain("near")


def _blocks(chain) -> list:
    """A request's chain as the zoo's entries (its segments' parts in order)."""
    from blockllm.runtime.segments import Segment
    return [p for e in chain for p in (e.parts if isinstance(e, Segment) else (e,))]


@pytest.mark.parametrize("segments", [True, False])
def test_kv_pools_stay_within_the_kv_budget_whatever_the_layers_per_block(tmp_path, segments):
    """Each pool holds every layer of its block (or segment): the budget counts them all."""
    zoo = Zoo(tmp_path / "zoo")
    add_source(zoo, tiny_source(seed=0), "one", layers_per_block=1)
    add_source(zoo, tiny_source(seed=1), "two", layers_per_block=2)
    budget = 64 * PAGE
    eng = Engine(zoo, zoo.models(), EngineConfig(kv_budget=budget, segments=segments))
    eng.generate("two", [PROMPTS[0]], 2)
    eng.generate("one", [PROMPTS[0]], 2)
    pools = list(eng.hosts[0].pools.values())
    # a pool per segment: all 3 layers of each model; per block: 3 of one layer, 2 + 1
    assert len(pools) == (2 if segments else 3 + 2)
    used = sum(p.kv.numel() * p.kv.element_size() for p in pools)
    assert used <= budget and used > budget * 0.8, (used, budget)


def test_min_tokens_masks_the_stop_tokens_until_reached(zoo4):
    """As vLLM: before min_tokens outputs, stop ids cannot be sampled (their logits are masked);
    empty stop ids (ignore_eos) never stop."""
    zoo, ref = zoo4
    eng = Engine(zoo, ["base"], EngineConfig(device=DEVICE))
    first = ref["base"][0][0]
    [stopped] = eng.generate("base", [PROMPTS[0]], N, stop_ids=frozenset({first}))
    assert stopped == [first]
    r = eng.submit("base", PROMPTS[0], max_tokens=N, stop_ids=frozenset({first}), min_tokens=3)
    while eng.has_work():
        eng.step()
    assert r.output[0] != first and len(r.output) >= 3
    assert first not in r.output[:3]
    with pytest.raises(Exception, match="min_tokens"):
        eng.submit("base", PROMPTS[0], max_tokens=2, min_tokens=3)


def test_preemption_takes_the_newest_request_never_an_older_one(zoo4):
    """As vLLM: when a pool is full the newest holder is preempted, the requester included.
    An old long request keeps its KV while newer ones come and go, and everyone finishes
    with the reference's tokens (the old policy preempted the newest *other* holder, so a
    new request could evict an older, longer one)."""
    zoo, ref = zoo4
    eng = Engine(zoo, ["base"], EngineConfig(kv_budget=5 * 2 * PAGE, device=DEVICE))
    old = eng.submit("base", PROMPTS[2], max_tokens=N, stop_ids=frozenset())
    eng.step()
    newer = [eng.submit("base", p, max_tokens=N, stop_ids=frozenset()) for p in PROMPTS]
    while eng.has_work():
        eng.step()
    assert eng.counters["preemptions"] > 0, "the pool was meant to be too small for all"
    assert old.preemptions == 0 and old.output == ref["base"][2]
    assert [r.output for r in newer] == ref["base"]


def test_kv_pages_follow_sharing_and_admit_more_requests(zoo4):
    """A pool that three models' chains run holds three models' sequences: with pages in
    proportion to that (`kv_by_sharing`) the same KV budget admits more requests at once than
    the same pages everywhere (the default), and every request keeps its reference tokens."""
    zoo, ref = zoo4
    models = ["base", "ft", "lora"]  # ft: its own last layer; lora: the base's decoder blocks
    peak = {}
    for by_sharing in (False, True):
        eng = Engine(zoo, models, EngineConfig(kv_budget=12 * PAGE * 3, device=DEVICE,
                                               kv_by_sharing=by_sharing, segments=False))
        tables = eng.sched.kv.tables
        degree = sharing_degree(eng, tables)
        pages = {k: t.num_pages for k, t in tables.items()}
        if by_sharing:
            one = min(p for k, p in pages.items() if degree[k] == 1)
            assert all(abs(p - one * degree[k]) <= degree[k] for k, p in pages.items())
        else:
            assert len(set(pages.values())) == 1
        reqs = [(m, i, eng.submit(m, p, max_tokens=N, stop_ids=frozenset()))
                for i, p in enumerate(PROMPTS) for m in models]
        peak[by_sharing] = 0
        while eng.has_work():
            eng.step()
            peak[by_sharing] = max(peak[by_sharing], len(eng.sched.running))
        for m, i, r in reqs:
            assert r.output == ref[m][i], (m, i, by_sharing)
    assert peak[True] > peak[False], peak


def test_a_shared_block_s_call_serves_every_model_that_shares_it(zoo4, monkeypatch):
    """Who ran in which call: requests of base, ft and lora (the same decoder blocks but ft's
    last layer) run the blocks they share in one call, several models at once; a block of
    one model's own only ever holds that model's requests; tokens stay the reference's."""
    zoo, ref = zoo4
    models = ["base", "ft", "lora"]
    eng = Engine(zoo, models, EngineConfig(device=DEVICE))
    calls = []
    launch = eng.executor.launch

    def spy(device, key, reqs, tied_key):
        calls.append((key, [r.model for r in reqs]))
        return launch(device, key, reqs, tied_key)
    monkeypatch.setattr(eng.executor, "launch", spy)
    reqs = [(m, i, eng.submit(m, p, max_tokens=N, stop_ids=frozenset()))
            for i, p in enumerate(PROMPTS) for m in models]
    while eng.has_work():
        eng.step()
    users = {}
    for m in models:
        for k, _ in eng.all_entries(m):
            users.setdefault(k, set()).add(m)
    assert any(len(set(ms)) == 3 for k, ms in calls), "a call held all three models"
    for key, ms in calls:
        assert set(ms) <= users[key], (key, ms)  # never a model that does not run the block
    for m, i, r in reqs:
        assert r.output == ref[m][i]
