"""Paged attention against dense attention computed from scratch: decodes of different
lengths (the native kernel and the torch gather path), first prompt chunks, later chunks,
all mixed in one step; GQA, MHA and MQA; float32 and bfloat16."""

import pytest
import torch
import torch.nn.functional as F

from blockllm.kernels import paged_decode
from blockllm.models.attention import AttnBatch, paged_attention, paged_decode_reference
from blockllm.models.kv_cache import KVLayout, KVPool, PageTable


def _dense(q, keys, values, n):
    """One sequence: its last n queries over all its keys, causal. q (n, H, D); keys (L, Hkv, D)."""
    L = keys.shape[0]
    mask = torch.arange(L)[None, :] <= torch.arange(L - n, L)[:, None]
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None].double(),
                                         keys.transpose(0, 1)[None].double(),
                                         values.transpose(0, 1)[None].double(),
                                         attn_mask=mask, enable_gqa=True)
    return out[0].transpose(0, 1)


def _step(heads, kv_heads, dtype, history, new, native, monkeypatch, seed=0):
    """Sequences holding `history[i]` tokens of KV get `new[i]` tokens in one step: paged
    attention's output, and the dense reference for every new token."""
    if not native:
        monkeypatch.setattr("blockllm.models.attention.paged_decode", lambda: None)
    g = torch.Generator().manual_seed(seed)
    D, ps = 16, 4
    pool = KVPool(KVLayout(1, 64, ps, kv_heads, D), dtype)
    table = PageTable(64, ps)
    full_k, full_v = [], []
    for s, (h, n) in enumerate(zip(history, new)):
        k = torch.randn(h + n, kv_heads, D, generator=g).to(dtype)
        v = torch.randn(h + n, kv_heads, D, generator=g).to(dtype)
        table.append(s, h)
        if h:
            pool.write(0, k[:h], v[:h], torch.tensor(_slots(table, s, 0, h)))
        full_k.append(k)
        full_v.append(v)
    batch = AttnBatch.build(table, list(range(len(new))), list(new))
    q = torch.randn(sum(new), heads, D, generator=g).to(dtype)
    k_new = torch.cat([k[h:] for k, h in zip(full_k, history)])
    v_new = torch.cat([v[h:] for v, h in zip(full_v, history)])
    got = paged_attention(q, k_new, v_new, pool, 0, batch)
    want, row = [], 0
    for k, v, n in zip(full_k, full_v, new):
        want.append(_dense(q[row:row + n], k, v, n))
        row += n
    return got, torch.cat(want)


def _slots(table, s, start, end):
    ps, pages = table.page_size, table.pages(s)
    return [pages[i // ps] * ps + i % ps for i in range(start, end)]


@pytest.mark.parametrize("native", [True, False], ids=["native", "gather"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4), (6, 1)], ids=["gqa", "mha", "mqa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_mixed_step_equals_dense_attention(native, heads, kv_heads, dtype, monkeypatch):
    if native and paged_decode() is None:
        pytest.skip("the native kernel could not be built here (no C++ compiler?)")
    # decodes at contexts 1, 9 and 23 (pages not contiguous: sequences interleave), a first
    # prompt chunk of 6 tokens, a later chunk of 5 after 7 tokens of KV
    got, want = _step(heads, kv_heads, dtype, [0, 8, 7, 22, 0], [1, 1, 5, 1, 6], native,
                      monkeypatch)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("native", [True, False], ids=["native", "gather"])
def test_decode_only_step(native, monkeypatch):
    if native and paged_decode() is None:
        pytest.skip("the native kernel could not be built here (no C++ compiler?)")
    got, want = _step(4, 2, torch.float32, [3, 40, 17, 16], [1, 1, 1, 1], native, monkeypatch)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_native_kernel_equals_its_torch_reference():
    """The native decode kernel and the gather + SDPA path on the same pool and tables."""
    if paged_decode() is None:
        pytest.skip("the native kernel could not be built here (no C++ compiler?)")
    g = torch.Generator().manual_seed(1)
    pool = KVPool(KVLayout(2, 32, 16, 3, 64), torch.float32)
    pool.kv.normal_(generator=g)
    table = PageTable(32, 16)
    for s, n in enumerate([130, 1, 47, 64]):
        table.append(s, n)
    batch = AttnBatch.describe(table, [0, 1, 2, 3], [1, 1, 1, 1])
    q = torch.randn(4, 9, 64, generator=g)
    k_cache, v_cache = pool.pages(1)
    got = paged_decode()(q, k_cache, v_cache, batch.page_tables, batch.decode_lens, 0.125)
    want = paged_decode_reference(q, pool, 1, batch.page_tables, batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_dead_builders_lock_does_not_stop_the_kernels_loading(tmp_path):
    """cpp_extension waits forever for the build folder's lock: a stale one (its holder was
    killed) is removed, a fresh one (a build under way) is left alone, and a library built
    before loads without taking the lock at all."""
    import os
    import time

    from blockllm import kernels
    lock = tmp_path / "lock"
    lock.touch()
    kernels._clear_stale_lock(lock)
    assert lock.exists(), "a build under way keeps its lock"
    old = time.time() - 3600
    os.utime(lock, (old, old))
    kernels._clear_stale_lock(lock)
    assert not lock.exists()
    assert not kernels._load_built(tmp_path / "missing.so")
    (tmp_path / "cut-short.so").write_bytes(b"not a library")
    assert not kernels._load_built(tmp_path / "cut-short.so")
