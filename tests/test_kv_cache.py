"""Exact tests of the KV layout contract and the page bookkeeping (integers only)."""

import pytest
import torch

from blockllm.models.attention import AttnBatch, _mask
from blockllm.models.kv_cache import KVLayout, KVPool, OutOfPages, PageTable


def test_layout_shape_contract():
    lay = KVLayout(n_layers=3, num_pages=10, page_size=4, n_kv_heads=2, head_dim=8)
    assert lay.shape == (3, 2, 10, 4, 2, 8)
    assert lay.bytes(torch.float32) == 3 * 2 * 10 * 4 * 2 * 8 * 4
    assert KVPool(lay, torch.float32).kv.shape == lay.shape


def test_page_table_hands_out_exact_ids_and_slots():
    t = PageTable(num_pages=4, page_size=4)
    assert t.append(7, 5) == [0, 1, 2, 3, 4]  # pages 0 and 1
    assert t.pages(7) == [0, 1] and t.length(7) == 5 and t.free_pages == 2
    assert t.append(9, 2) == [8, 9]  # page 2
    assert t.append(7, 3) == [5, 6, 7]  # fills page 1, no new page
    assert t.pages_needed(7, 1) == 1
    assert t.append(7, 1) == [12]  # page 3
    assert t.free_pages == 0
    with pytest.raises(OutOfPages):
        t.append(9, 3)  # page 2 has room for 2 more only
    assert t.length(9) == 2, "a failed append changes nothing"
    t.free(7)
    assert t.free_pages == 3 and t.pages(7) == [] and t.length(7) == 0
    assert t.append(1, 4) == [0, 1, 2, 3]  # lowest freed page first
    t.free(12345)  # unknown: no-op


def test_pool_write_then_gather_roundtrip():
    lay = KVLayout(n_layers=2, num_pages=6, page_size=2, n_kv_heads=1, head_dim=3)
    pool = KVPool(lay, torch.float32)
    t = PageTable(6, 2)
    slots_a = t.append(0, 3)
    slots_b = t.append(1, 2)
    k = torch.arange(5 * 3, dtype=torch.float32).view(5, 1, 3)
    pool.write(1, k, -k, torch.tensor(slots_a + slots_b))
    pages = torch.tensor([t.pages(0), t.pages(1) + [0]])
    kk, vv = pool.gather(1, pages, max_len=3)
    assert kk.shape == (2, 3, 1, 3)
    torch.testing.assert_close(kk[0], k[:3])
    torch.testing.assert_close(kk[1, :2], k[3:])
    torch.testing.assert_close(vv[0], -k[:3])
    assert pool.kv[0].abs().sum() == 0, "layer 0 untouched"


def test_attn_batch_positions_slots_and_mask():
    t = PageTable(8, 4)
    t.append(0, 3)  # sequence 0 already holds 3 tokens
    b = AttnBatch.build(t, [0, 1], [1, 2])
    assert b.positions.tolist() == [3, 0, 1]
    assert b.slots.tolist() == [3, 4, 5]
    assert b.context_lens == (4, 2)
    assert b.page_tables.tolist() == [[0], [1]]
    assert not b.fresh_prefill
    m = _mask([1, 2], [4, 2])[:, 0].int().tolist()
    assert m[0] == [[1, 1, 1, 1], [1, 0, 0, 0]]  # one real query row; the padded row sees key 0
    assert m[1] == [[1, 0, 0, 0], [1, 1, 0, 0]]  # causal over its own 2 tokens


def test_attn_batch_is_all_or_nothing():
    t = PageTable(2, 4)
    t.append(0, 4)
    with pytest.raises(OutOfPages):
        AttnBatch.build(t, [1, 2], [4, 4])  # needs 2 pages, 1 free
    assert t.length(1) == 0 and t.free_pages == 1
