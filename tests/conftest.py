"""Shared fixtures: tiny Llama configs with seeded weights, the embedded model, temp zoos."""

from __future__ import annotations

import os

import pytest
import torch

from blockllm.loaders.dummy import dummy_tensors
from blockllm.loaders.source import ModelSource
from blockllm.loaders.tokenizer import ByteTokenizer
from blockllm.models.config import LlamaConfig

TINY = dict(model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=128,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=512,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

# configs the parity tests cover: GQA, MHA, MQA, tied and untied heads, llama3 rope scaling
TINY_VARIANTS = {
    "gqa-untied": {},
    "mha-tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "mqa-headdim": dict(num_key_value_heads=1, head_dim=32),
    "llama3-rope": dict(rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64)),
}


def tiny_source(seed: int = 0, std: float = 0.08, **overrides) -> ModelSource:
    cfg = LlamaConfig.from_hf({**TINY, **overrides})
    return ModelSource(config=cfg, tensors=dummy_tensors(cfg, seed, std=std),
                       origin=f"test:tiny:{seed}", tokenizer_loader=lambda: ByteTokenizer(cfg))


ENGINE_PROMPTS = [[5, 17, 99], [3, 44, 7, 8], [250, 9, 1, 2, 3], [60]]
ENGINE_N = 24  # new tokens per prompt in the engine tests


@pytest.fixture(scope="module")
def zoo4(tmp_path_factory):
    """The four-model zoo (base, ft, lora, other: tests.test_zoo) and each model's greedy
    reference for ENGINE_PROMPTS from its own chain, run alone (zoo.ingest.chain_model)."""
    from tests.test_zoo import four_model_zoo
    zoo = four_model_zoo(tmp_path_factory.mktemp("engine"))
    return zoo, greedy_refs(zoo)


def greedy_refs(zoo) -> dict[str, list[list[int]]]:
    """Each model's greedy ENGINE_N tokens for each of ENGINE_PROMPTS, from its own chain run
    alone (zoo.ingest.chain_model): the reference the engine tests compare against."""
    from blockllm.zoo.ingest import chain_model
    return {m: [chain_model(zoo, m).generate([p], ENGINE_N, stop_ids=())[0]
                for p in ENGINE_PROMPTS] for m in zoo.models()}


def kv_layers(eng) -> int:
    """Decoder layers that hold KV in the engine's pools (a shared layer's once)."""
    return sum(eng.info[eng.entry_of[k][0].block].signature["n_layers"]
               for k in eng.sched.kv.tables)


def check_tokens(eng, reqs, ref) -> None:
    """Every (model, prompt index, request) ran to its length with the reference's tokens,
    and every KV page came back."""
    for m, i, r in reqs:
        assert r.finish_reason == "length", (m, i, r.finish_reason)
        assert r.output == ref[m][i], (m, i)
    assert all(t.free_pages == t.num_pages for t in eng.sched.kv.tables.values()), "no KV leaks"


def good_and_bad_zoo(root):
    """A zoo of two tiny models, "good" and "bad", with one bit flipped in a block only "bad"
    uses (the zoo's hash check finds it at load). Returns (zoo, the corrupt block's id)."""
    from blockllm.zoo.ingest import add_source
    from blockllm.zoo.store import Zoo
    zoo = Zoo(root / "zoo")
    add_source(zoo, tiny_source(seed=0), "good")
    add_source(zoo, tiny_source(seed=3), "bad")
    victim = zoo.chain("bad")[2].block
    path = zoo.block_path(victim)
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    return zoo, victim


@pytest.fixture(scope="session")
def embedded_source():
    from blockllm.loaders import load_source
    return load_source("embedded")


@pytest.fixture(scope="module")
def ray_session():
    """Ray for a module's tests, shut down after them (its GCS, raylet and idle workers would
    otherwise hold memory and cores through the rest of the run)."""
    ray = pytest.importorskip("ray")
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test touches the user's zoo or cache."""
    monkeypatch.setenv("BLOCKLLM_ZOO", str(tmp_path / "default-zoo"))
    monkeypatch.setenv("BLOCKLLM_CACHE", str(tmp_path / "cache"))


torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
