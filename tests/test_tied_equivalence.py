"""A tied head under equivalence: an equivalent chain that swaps a tied model's embedding must
compute its logits with the embedding it ran, also when its requests share a step with the
model's exact chain (issue 16: the head's key named the model's own embedding, and a batch
used its first request's embedding for every request's logits)."""

import itertools

import pytest
import torch

from blockllm.models.chain import ChainModel
from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from tests.conftest import ENGINE_N as N
from tests.conftest import ENGINE_PROMPTS as PROMPTS
from tests.conftest import tiny_source


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    """Tied models A and C that differ only in their embedding (C's far from A's), and an
    option that serves C with A's embedding."""
    from blockllm.zoo.ingest import add_source
    from blockllm.zoo.store import Zoo
    zoo = Zoo(tmp_path_factory.mktemp("tied-swap") / "zoo")
    a = tiny_source(seed=9, tie_word_embeddings=True)
    g = torch.Generator().manual_seed(1)
    tensors = dict(a.tensors)
    w = tensors["model.embed_tokens.weight"]
    tensors["model.embed_tokens.weight"] = w + 0.5 * w.std() * torch.randn(w.shape, generator=g)
    c = type(a)(config=a.config, tensors=tensors, origin="test:tied-c",
                tokenizer_loader=a.tokenizer_loader)
    add_source(zoo, a, "A")
    add_source(zoo, c, "C")
    ca, cc = zoo.chain("A"), zoo.chain("C")
    assert ca[0].block != cc[0].block and ca[1:] == cc[1:], "only the embedding differs"
    option = [ca[0], *cc[1:]]
    zoo.add_chain_option("C", "t=swap", option, [], dict(
        score=0.0, perplexity=1.0, drop_points=0.0, saved_bytes=1, threshold=0.5,
        calib_hash="test", n_eval=1))
    refs = {}
    for label, chain in (("exact", cc), ("swap", option)):
        weights = [(zoo.load_block(e.block), None) for e in chain]
        ref = ChainModel(zoo.config("C"), weights, "cpu", torch.float32)
        refs[label] = [ref.generate([p], N)[0] for p in PROMPTS]
    assert refs["exact"] != refs["swap"], "the two embeddings must give other tokens"
    return zoo, option, refs


@pytest.mark.parametrize("devices", [1, 2])
def test_each_request_s_logits_use_the_embedding_it_ran(swapped, devices, monkeypatch):
    import blockllm.runtime.engine as engine_mod
    zoo, option, refs = swapped
    eng = Engine(zoo, ["A", "C"], EngineConfig(devices=devices, use_equivalence=True))
    try:
        exact = eng.chains["C"]
        swap = next(c for label, c, _ in eng.options["C"] if label == "t=swap")
        assert swap[0].block == eng.chains["A"][0].block
        turns = itertools.cycle([exact, swap])  # exact and swapped requests, one step
        monkeypatch.setattr(engine_mod, "assemble_chain", lambda e, m: next(turns))
        reqs = [(label, i, eng.submit("C", p, max_tokens=N, stop_ids=frozenset()))
                for i, p in enumerate(PROMPTS) for label in ("exact", "swap")]
        heads = {r.keys[-1] for _, _, r in reqs}
        assert len(heads) == 2 and all(r.keys[-1].tied_embed == r.chain[0].block
                                       for _, _, r in reqs)
        mixed = set()
        orig = eng.executor.launch

        def spy(device, key, batch, tied_key):
            if key.tied:
                mixed.add(len({r.chain[0].block for r in batch}))
            return orig(device, key, batch, tied_key)
        monkeypatch.setattr(eng.executor, "launch", spy)
        while eng.has_work():
            eng.step()
        assert mixed == {1}, "a head call reads one embedding for all its requests"
        for label, i, r in reqs:
            assert r.output == refs[label][i], (label, i)
    finally:
        eng.close()


def test_a_pinned_chain_option_serves_every_request(swapped):
    """`serve --pin-chain C=t=swap`: every request of C runs that recorded option (how
    lm-eval measures one, experiments/lm_eval_check.py --pin); an unknown label is refused
    with the labels the zoo has, a pin of a model not served by name."""
    from blockllm.errors import UserError
    zoo, option, refs = swapped
    eng = Engine(zoo, ["A", "C"], EngineConfig(pinned_chains=(("C", "t=swap"),)))
    try:
        reqs = [eng.submit("C", p, max_tokens=N, stop_ids=frozenset()) for p in PROMPTS]
        while eng.has_work():
            eng.step()
        assert [r.output for r in reqs] == refs["swap"]
        assert all(r.chain[0].block == option[0].block for r in reqs)
    finally:
        eng.close()
    with pytest.raises(UserError, match="t=swap"):
        Engine(zoo, ["C"], EngineConfig(pinned_chains=(("C", "t=nope"),)))
    with pytest.raises(UserError, match="names C, not served"):  # a typo is not ignored
        Engine(zoo, ["A"], EngineConfig(pinned_chains=(("C", "t=swap"),)))
