"""Exact tests of the KV layout contract and the page bookkeeping (integers only)."""

import pytest
import torch

from blockllm.models.attention import AttnBatch
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


def test_attn_batch_positions_slots_and_masks():
    t = PageTable(8, 4)
    t.append(0, 3)  # sequence 0 already holds 3 tokens
    t.append(2, 5)
    b = AttnBatch.build(t, [0, 1, 2], [1, 2, 1])
    assert b.positions.tolist() == [3, 0, 1, 5]
    assert b.slots.tolist() == [3, 12, 13, 9]  # seq 1 got page 3 (seq 2 holds pages 1, 2)
    assert b.context_lens == (4, 2, 6)
    assert b.page_tables.tolist() == [[0, 0], [3, 0], [1, 2]]
    assert b.decodes == (0, 2) and b.decode_rows.tolist() == [0, 3]
    assert b.decode_lens.tolist() == [4, 6]
    assert b.prefills == ((1, 1, 2, 2),)  # sequence 1: rows 1-2, 2 new tokens, context 2
    assert b.decode_bias(torch.float32)[:, 0, 0].isinf().int().tolist() == [
        [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]]  # -inf past each decode's length
    t.append(1, 2)  # a later chunk of sequence 1: 2 new tokens after its first 2
    c = AttnBatch.describe(t, [1], [2])
    assert c.decodes == () and c.prefills == ((0, 0, 2, 4),)
    assert c.chunk_bias(0, torch.float32).isinf().int().tolist() == [
        [0, 0, 0, 1], [0, 0, 0, 0]]  # bottom-right causal over the whole context
    one = AttnBatch.describe(t, [0, 2], [1, 1])
    assert one.decode_rows is None and one.decode_bias(torch.float32) is not None


def test_attn_batch_is_all_or_nothing():
    t = PageTable(2, 4)
    t.append(0, 4)
    with pytest.raises(OutOfPages):
        AttnBatch.build(t, [1, 2], [4, 4])  # needs 2 pages, 1 free
    assert t.length(1) == 0 and t.free_pages == 1
