"""Chain assembly and substitution rules: pure functions, made-up ids and numbers, exact."""

import pytest

from blockllm.zoo.assembly import assemble, saved_bytes, substitution_chain
from blockllm.zoo.equivalence import Evidence, Metrics
from blockllm.zoo.partition import ChainEntry as E


def ev(pos, block, rel, adapter=None):
    return Evidence("m", pos, E(block, adapter), Metrics(1 - rel, 1 - rel, rel, rel, 10))


EXACT = (E("emb"), E("d1"), E("d2"), E("d3"), E("head"))


def test_substitution_chain_respects_threshold_and_prefers_most_used_blocks():
    evidence = [ev(1, "b1", 0.01), ev(2, "b2", 0.04), ev(2, "c2", 0.02), ev(3, "b3", 0.3)]
    users = {"b1": 3, "b2": 5, "c2": 1, "b3": 5}  # d1..d3 unknown: used by this model only
    assert substitution_chain(EXACT, evidence, 0.005, users) == EXACT
    assert substitution_chain(EXACT, evidence, 0.01, users) == (
        E("emb"), E("b1"), E("d2"), E("d3"), E("head"))
    # at 0.05 both b2 and c2 pass at position 2: the more used b2 wins over the closer c2
    assert substitution_chain(EXACT, evidence, 0.05, users)[2] == E("b2")
    assert substitution_chain(EXACT, evidence, 0.05, {**users, "c2": 5})[2] == E("c2")
    assert substitution_chain(EXACT, evidence, 1.0, users)[3] == E("b3")


def test_substitution_only_where_it_frees_bytes_or_grows_batches():
    evidence = [ev(1, "b1", 0.01), ev(2, "b2", 0.01)]
    users = {"d1": 3, "b1": 2, "d2": 3, "b2": 4}
    # d1 is shared by 3 models: swapping it for a less used b1 gains nothing; b2 is used more
    assert substitution_chain(EXACT, evidence, 0.05, users) == (
        E("emb"), E("d1"), E("b2"), E("d3"), E("head"))
    # once d1 is this model's alone, any equivalent block used elsewhere frees its bytes
    assert substitution_chain(EXACT, evidence, 0.05, {**users, "d1": 1})[1] == E("b1")


def test_an_adapter_entry_may_drop_its_adapter():
    lora = (E("emb"), E("d1", "A1"), E("head"))
    evidence = [ev(1, "d1", 0.01), ev(1, "d9", 0.001, adapter="A9")]
    users = {"d1": 4, "d9": 4}
    # both pay (A1 is freed); equal users, so the candidate without an adapter wins
    assert substitution_chain(lora, evidence, 0.05, users)[1] == E("d1")


def test_saved_bytes_counts_only_blocks_no_one_else_needs():
    sizes = {"emb": 100, "d1": 10, "d2": 10, "d3": 10, "head": 5, "b1": 10, "s": 2}
    chain = (E("emb"), E("b1"), E("d2"), E("d3"), E("head"))
    assert saved_bytes(EXACT, chain, others={"b1"}, block_bytes=sizes) == 10
    assert saved_bytes(EXACT, chain, others=set(), block_bytes=sizes) == 0  # b1 is new bytes
    assert saved_bytes(EXACT, chain, others={"b1", "d1"}, block_bytes=sizes) == 0


SIZES = {"emb": 100, "d1": 10, "d2": 10, "d3": 10, "head": 5, "b1": 10, "b2": 10, "b3": 10}
SUB1 = (E("emb"), E("b1"), E("d2"), E("d3"), E("head"))
SUB3 = (E("emb"), E("b1"), E("b2"), E("b3"), E("head"))
OPTIONS = [("exact", EXACT, 0.0), ("t=0.01", SUB1, 0.4), ("t=0.1", SUB3, 3.0)]


def test_assemble_prefers_resident_blocks_within_budget():
    resident = frozenset({"emb", "head", "b1", "b2", "b3", "d2", "d3"})
    c = assemble(OPTIONS, budget=1.0, resident=resident, load={}, block_bytes=SIZES)
    assert c.label == "t=0.01" and c.load_bytes == 0
    c = assemble(OPTIONS, budget=5.0, resident=resident, load={}, block_bytes=SIZES)
    assert c.label == "t=0.01", "both resident: equal bytes and load, the smaller drop wins"
    c = assemble(OPTIONS, budget=5.0, resident=resident, load={"d2": 7.0}, block_bytes=SIZES)
    assert c.label == "t=0.1", "a loaded block is routed around when the budget allows"


@pytest.mark.parametrize("budget", [0.0, 0.39, 1.0, 2.99])
def test_assemble_never_picks_an_option_over_budget(budget):
    """Even when the over-budget chain is the only one fully resident and idle."""
    resident = frozenset(SIZES) - {"d1", "d2", "d3"}
    c = assemble(OPTIONS, budget, resident, load={"d1": 100.0, "d2": 100.0},
                 block_bytes=SIZES)
    assert c.drop_points <= budget
    assert c.label != "t=0.1"


def test_assemble_needs_the_exact_chain_and_is_deterministic():
    with pytest.raises(ValueError):
        assemble(OPTIONS[1:], 1.0, frozenset(), {}, SIZES)
    tie = [("exact", EXACT, 0.0), ("b", EXACT, 0.0), ("a", EXACT, 0.0)]
    assert assemble(tie, 1.0, frozenset(), {}, SIZES).label == "a"
    assert assemble(list(reversed(tie)), 1.0, frozenset(), {}, SIZES).label == "a"


def test_assembly_counts_the_adapters_of_the_engines_segments():
    """The engine serves decoder runs as segments whose `adapter` is a tuple (one id or None
    per part): assembly counts each adapter's bytes (a tuple used to be looked up whole)."""
    from blockllm.runtime.segments import Segment
    own = Segment((E("d1", "A1"), E("d2", None)))
    swapped = Segment((E("d1", None), E("d2", None)))
    exact = (E("emb"), own, E("head"))
    near = (E("emb"), swapped, E("head"))
    sizes = {"emb": 10, "head": 5, own.block: 100, swapped.block: 100, "A1": 7}
    resident = frozenset({"emb", "head", swapped.block})
    pick = assemble([("exact", exact, 0.0), ("near", near, 0.5)], 1.0, resident, {}, sizes)
    assert pick.label == "near"  # the exact chain would load its segment and A1 first
    exact_only = assemble([("exact", exact, 0.0)], 1.0, resident | {own.block}, {}, sizes)
    assert exact_only.load_bytes == 7, "the adapter still has to be loaded"
