"""BlockKey: the engine's typed block identities (shared, owned, tied, replicas)."""

from __future__ import annotations

from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.keys import BlockKey


def test_replicas_and_base():
    k = BlockKey("a" * 64)
    r = k.replica_of(2)
    assert r != k and r.base == k and r.replica == 2 and k.base is k
    assert r.replica_of(0) == k and {k, r, k.replica_of(2)} == {k, r}
    assert not k.tied and BlockKey("h", tied_embed="e").tied


def test_labels_are_short_and_tell_keys_apart():
    k = BlockKey("0123456789abcdef", owner="m1", tied_embed="fedcba9876543210", replica=1)
    assert str(k) == "0123456789ab/m1/tied/fedcba987654/replica/1"
    assert str(BlockKey("0123456789abcdef")) == "0123456789ab"


def test_engine_keys_shared_owned_and_tied(zoo4):
    zoo, _ = zoo4
    shared = Engine(zoo, ["base", "ft"], EngineConfig())
    own = Engine(zoo, ["base", "ft"], EngineConfig(share_blocks=False))
    try:
        e = shared.chains["base"][0]  # the embedding, which ft shares
        assert shared.key("base", e) == shared.key("ft", e) == BlockKey(e.block)
        assert own.key("base", e) == BlockKey(e.block, owner="base") != own.key("ft", e)
        for eng in (shared, own):
            head = eng.key("base", eng.chains["base"][-1])
            tied = eng.models["base"].tie_word_embeddings
            assert head.tied == tied
            if tied:
                assert head.tied_embed == eng.chains["base"][0].block
    finally:
        shared.close()
        own.close()
