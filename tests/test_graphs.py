"""CUDA graphs of decode steps (runtime/graphs.py): the static-buffer path against the eager
module, step after step, with batches that grow and shrink across buckets; the pool is
written only at the step's own slots (padding rows never touch another sequence's KV).

On a CPU the path runs without capture (`capture=False`); with BLOCKLLM_TEST_DEVICE=cuda the
same test captures and replays real graphs. tests/test_engine.py runs the whole engine with
`cuda_graphs="uncaptured"` (and, on a GPU, its default, captured) against the reference."""

import os

import pytest
import torch

from blockllm.models.attention import AttnBatch
from blockllm.models.chain import build_block
from blockllm.models.kv_cache import KVLayout, KVPool, PageTable
from blockllm.runtime.graphs import DecodeGraphs, bucket_of, pages_bucket
from blockllm.zoo.partition import partition
from tests.conftest import tiny_source

DEVICE = os.environ.get("BLOCKLLM_TEST_DEVICE", "cpu")


def test_buckets():
    assert [bucket_of(n) for n in (1, 2, 3, 5, 200, 256)] == [1, 2, 4, 8, 256, 256]
    assert bucket_of(257) is None
    assert [pages_bucket(n) for n in (1, 4, 5, 33)] == [4, 4, 8, 64]


def _decoder(seed=0):
    src = tiny_source(seed=seed, num_hidden_layers=3)
    blocks, _ = partition(src, layers_per_block=3)
    dec = next(b for b in blocks if b.kind == "decoder")
    mod = build_block(src.config, "decoder", dec.tensors, n_layers=3, device=DEVICE)
    return src.config, mod


@pytest.mark.parametrize("capture", [False, True] if DEVICE.startswith("cuda") else [False],
                         ids=lambda c: "captured" if c else "uncaptured")
@torch.inference_mode()
def test_graph_steps_equal_eager_steps_and_write_only_their_slots(capture):
    cfg, mod = _decoder()
    ps, pages = 4, 96
    layout = KVLayout(3, pages, ps, cfg.num_key_value_heads, cfg.head_dim)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(layout.shape, generator=g).to(DEVICE)  # what no step may overwrite
    eager_pool, graph_pool = KVPool.of(layout, noise.clone()), KVPool.of(layout, noise.clone())
    table = PageTable(pages, ps)
    graphs = DecodeGraphs(mod, torch.device(DEVICE), capture)
    written: set[int] = set()
    prompts = {s: 3 + 5 * s for s in range(7)}  # tokens of KV each sequence starts with
    for s, n in prompts.items():
        for slot in table.append(s, n):
            written.add(slot)
    # batches that grow, shrink and cross row and page buckets; the same bucket is reused
    for step, seqs in enumerate([[0], [0, 1, 2], [1, 2, 3, 4, 5], [0], [6, 5, 4, 3, 2, 1, 0],
                                 [2, 3], [2, 3], [4, 5, 6]]):
        attn = AttnBatch.build(table, seqs, [1] * len(seqs), DEVICE)
        written.update(attn.slots.tolist())
        x = torch.randn(len(seqs), cfg.hidden_size, generator=g).to(DEVICE)
        want = mod(x, eager_pool, attn)
        got = graphs.run(x, graph_pool, attn)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"step {step}")
        flat = [p.kv.view(3, 2, -1, cfg.num_key_value_heads, cfg.head_dim)
                for p in (eager_pool, graph_pool)]
        torch.testing.assert_close(flat[1], flat[0], rtol=1e-4, atol=1e-5)
        untouched = torch.ones(flat[1].shape[2], dtype=torch.bool)
        untouched[sorted(written)] = False
        want_noise = noise.view_as(flat[1])[:, :, untouched.to(DEVICE)]
        assert torch.equal(flat[1][:, :, untouched.to(DEVICE)], want_noise), \
            "a padding row wrote outside its step's slots"
    assert len(graphs.buckets) >= 3
    if capture:
        assert graphs.captures == len(graphs.buckets) and graphs.replays == 8


def test_a_moved_pool_clears_the_graphs():
    cfg, mod = _decoder()
    layout = KVLayout(3, 8, 4, cfg.num_key_value_heads, cfg.head_dim)
    table = PageTable(8, 4)
    table.append(0, 2)
    graphs = DecodeGraphs(mod, torch.device(DEVICE), capture=False)
    x = torch.ones(1, cfg.hidden_size, device=DEVICE)
    with torch.inference_mode():
        graphs.run(x, KVPool(layout, torch.float32, DEVICE), AttnBatch.build(table, [0], [1],
                                                                             DEVICE))
        first = graphs.buckets[(1, 4)]
        graphs.run(x, KVPool(layout, torch.float32, DEVICE), AttnBatch.build(table, [0], [1],
                                                                             DEVICE))
    assert graphs.buckets[(1, 4)] is not first, "the old pool's buckets were dropped"


def test_fits_only_plain_decode_batches():
    cfg, mod = _decoder()
    graphs = DecodeGraphs(mod, torch.device("cpu"), capture=False)
    table = PageTable(64, 4)
    for s in range(3):
        table.append(s, 3)
    assert graphs.fits(AttnBatch.build(table, [0, 1], [1, 1]), None)
    assert not graphs.fits(AttnBatch.build(table, [0, 1], [1, 2]), None), "a prompt chunk"
    assert not graphs.fits(AttnBatch.build(table, [2], [1]), lora=object()), "an adapter"
