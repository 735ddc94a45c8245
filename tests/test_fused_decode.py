"""A decode step through every layer of a decoder block in one native call
(models.fused_decode, kernels/decode_layers.cpp) against the Python path, layer by layer: the
same logits and the same KV pools, bit for bit; and the steps it must leave to Python."""

import pytest
import torch

from blockllm.models import fused_decode, llama
from blockllm.models.attention import AttnBatch
from blockllm.models.chain import ChainModel
from blockllm.models.lora import TARGETS, LoraAdapter, LoraSegments
from blockllm.zoo.partition import partition
from tests.conftest import tiny_source

pytestmark = pytest.mark.skipif(fused_decode.decode_layers() is None,
                                reason="the skinny kernel it uses needs AVX-512 or AVX2")
PROMPTS = [[5, 17, 99], [3, 44, 7, 8, 21, 30, 2, 9, 11], [250, 9], [60, 61, 62, 63, 64]]


def _chain(src) -> ChainModel:
    blocks, chain = partition(src)
    byid = {b.id: b for b in blocks}
    return ChainModel(src.config, [(byid[e.block], None) for e in chain], page_size=4)


def _count_calls(monkeypatch) -> list[int]:
    """The rows of each native call from now on (the kernel still runs)."""
    calls, kernel = [], fused_decode.decode_layers()
    monkeypatch.setattr(fused_decode, "decode_layers",
                        lambda: lambda x, *a: calls.append(len(x)) or kernel(x, *a))
    return calls


def _run(src, steps: int, monkeypatch, fused: bool) -> tuple[list[torch.Tensor], list, int]:
    """Prompts, then `steps` batched greedy decodes: the logits of each step, the pools, and
    how many block calls the native path took."""
    monkeypatch.setattr(fused_decode, "ENABLED", fused)
    calls = _count_calls(monkeypatch)
    model = _chain(src)
    model.reserve(sum(len(p) for p in PROMPTS) + len(PROMPTS) * (steps + 4))
    seqs = list(range(len(PROMPTS)))
    out = [model.step(seqs, PROMPTS)]
    for _ in range(steps):
        out.append(model.step(seqs, [[int(t)] for t in out[-1].argmax(-1)]))
    return out, [p.kv.clone() for p in model.pools], len(calls)


@pytest.mark.parametrize("overrides", [{}, dict(num_key_value_heads=4, tie_word_embeddings=True),
                                       dict(num_hidden_layers=3, num_key_value_heads=1)],
                         ids=["gqa", "mha-tied", "mqa-3-layers"])
@pytest.mark.parametrize("skinny_rows", [32, 1], ids=["skinny", "mkl-beyond-1-row"])
def test_one_call_per_block_equals_the_python_path_bit_for_bit(overrides, skinny_rows,
                                                               monkeypatch):
    monkeypatch.setattr(llama, "SKINNY_ROWS", skinny_rows)  # 1: 4 decode rows take MKL
    for module in (llama, fused_decode):  # MKL beyond, as on AVX-512 CPUs (see the next test)
        monkeypatch.setattr(module, "plain_onednn", lambda: False)
    src = tiny_source(seed=3, **overrides)
    want, want_kv, none = _run(src, 6, monkeypatch, fused=False)
    got, got_kv, calls = _run(src, 6, monkeypatch, fused=True)
    assert none == 0 and calls == 6 * len(_chain(src).decoders), "decodes only, one per block"
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(want_kv, got_kv, strict=True):
        assert torch.equal(a, b), "the same K/V written to the same slots"


def test_long_steps_stay_in_python_where_they_take_onednn(monkeypatch):
    """Where steps beyond SKINNY_ROWS take oneDNN on plain weights (AVX2 CPUs; the native
    call has MKL only), such a decode step takes the Python path: the same logits either
    way, and no native call for it."""
    monkeypatch.setattr(llama, "SKINNY_ROWS", 1)
    for module in (llama, fused_decode):
        monkeypatch.setattr(module, "plain_onednn", lambda: True)
    src = tiny_source(seed=3)
    want, _, _ = _run(src, 3, monkeypatch, fused=False)
    got, _, calls = _run(src, 3, monkeypatch, fused=True)
    assert calls == 0
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)


def test_mixed_steps_and_packed_weights_take_the_python_path(monkeypatch):
    """A step with a prompt chunk beside decodes, or a block with packed weights: no native
    call, and the step still runs."""
    from blockllm.models.llama import pack_weight
    src = tiny_source(seed=4)
    model = _chain(src)
    model.reserve(64)
    calls = _count_calls(monkeypatch)
    first = model.step([0], [[5, 6, 7]])
    second = model.step([0, 1], [[int(first.argmax())], [8, 9]])  # a decode and a prompt
    assert calls == []
    model.step([0, 1], [[int(t)] for t in second.argmax(-1)])  # decodes only: native
    assert calls == [2] * len(model.decoders)
    for block in model.decoders:  # one packed matrix per layer is enough
        for layer in block.layers:
            layer.mlp.down_weight = pack_weight(layer.mlp.down_weight)
        block.fused_weights = fused_decode.weight_lists(block)  # what replaces one does
    model.step([0, 1], [[1], [2]])
    assert calls == [2] * len(model.decoders), "packed weights stay on the Python path"


def _adapter(cfg, modules: tuple[str, ...], seed: int, r: int = 3) -> LoraAdapter:
    """Random A and B for `modules` of every layer (a tiny block has at most that many)."""
    g = torch.Generator().manual_seed(seed)
    hid, q = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    kv, inter = cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size
    dims = dict(zip(TARGETS, [(hid, q), (hid, kv), (hid, kv), (q, hid), (hid, inter),
                              (hid, inter), (inter, hid)], strict=True))
    tensors = {}
    for j in range(cfg.num_hidden_layers):
        for m in modules:
            tensors[f"layers.{j}.{m}.lora_A"] = torch.randn(r, dims[m][0], generator=g) * 0.2
            tensors[f"layers.{j}.{m}.lora_B"] = torch.randn(dims[m][1], r, generator=g) * 0.2
    return LoraAdapter(tensors, 2.0)


@pytest.mark.parametrize("mix", ["one-adapter", "mixed-with-base-rows"])
def test_lora_decode_steps_take_one_call_and_equal_the_python_path(mix, monkeypatch):
    """Decode steps whose rows use adapters (one for all, or several mixed with base rows,
    one targeting only q/v/down so the rest are rank 0): one native call per block, the
    same logits and KV as the Python path's per-matmul deltas, bit for bit."""
    for module in (llama, fused_decode):
        monkeypatch.setattr(module, "plain_onednn", lambda: False)
    src = tiny_source(seed=5)
    some = _adapter(src.config, ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"), 1)
    full = _adapter(src.config, TARGETS, 2)
    rows = [full] * 4 if mix == "one-adapter" else [some, None, full, some]

    def run(fused: bool):  # the rows' adapters are read when it runs
        monkeypatch.setattr(fused_decode, "ENABLED", fused)
        calls = _count_calls(monkeypatch)
        model = _chain(src)
        model.reserve(sum(len(p) for p in PROMPTS) + len(PROMPTS) * 8)
        seqs = list(range(len(PROMPTS)))
        out = [model.step(seqs, PROMPTS)]  # the prompts on base weights: Python either way
        with torch.inference_mode():
            for _ in range(4):
                batch = AttnBatch.build(model.table, seqs, [1] * len(seqs), "cpu")
                lora = LoraSegments.per_sequence(rows, [1] * len(seqs))
                h = model.embed(out[-1].argmax(-1))
                for mod, _, pool in model.stages:
                    h = mod(h) if pool is None else mod(h, model.pools[pool], batch, lora)
                out.append(model.head(h))
        return out, [p.kv.clone() for p in model.pools], len(calls), len(model.decoders)

    want, want_kv, none, _ = run(fused=False)
    got, got_kv, calls, blocks = run(fused=True)
    assert none == 0 and calls == 4 * blocks, "every LoRA decode step in one call per block"
    rows = [None] * 4
    plain, _, _, _ = run(fused=True)
    assert not torch.equal(plain[-1], got[-1]), "the adapters must change the logits"
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(want_kv, got_kv, strict=True):
        assert torch.equal(a, b)
