"""Per-step attention metadata over a paged pool: which slots the new tokens take, and masks.

A step runs T new tokens of B sequences flattened along one axis (like vLLM): hidden states
are (T, hidden). Sequence b contributes `query_lens[b]` tokens, and after the step holds
`context_lens[b]` tokens of KV. Built once per step and block, shared by the block's layers.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from blockllm.models.kv_cache import KVPool, OutOfPages, PageTable
from blockllm.models.rope import cos_sin


@dataclass
class AttnBatch:
    positions: torch.Tensor  # (T,) long: position of each new token in its sequence
    slots: torch.Tensor  # (T,) long: pool slot that each new token's K/V is written to
    query_lens: tuple[int, ...]  # new tokens per sequence (sum == T)
    context_lens: tuple[int, ...]  # KV length per sequence after this step
    page_tables: torch.Tensor  # (B, max_pages) long, padded with page 0
    mask: torch.Tensor | None  # (B, 1, max_q, max_ctx) bool, None when no masking is needed
    fresh_prefill: bool  # one sequence whose whole context is new: causal attention on the fly
    _cache: dict = field(default_factory=dict, repr=False)  # per-step caches: (rope key, dtype)
    #                                                      -> (cos, sin); ("bias", dtype) -> bias

    def rope(self, inv_freq: torch.Tensor, dtype: torch.dtype, rope_key: Hashable
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, head_dim) of this step's positions; computed once per distinct RoPE
        (`rope_key` names the RoPE config that produced `inv_freq`)."""
        key = (rope_key, dtype)
        if key not in self._cache:
            self._cache[key] = cos_sin(inv_freq, self.positions, dtype)
        return self._cache[key]

    def bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The mask as an additive bias (0 or -inf) in `dtype`, made once per step and dtype.

        SDPA gets this rather than the boolean mask: on an H100 a boolean mask sent PyTorch
        2.11 to a backend that builds a plan for every new shape (50 ms per call, measured),
        and shapes change every step; a float bias costs 27-40 us per call there."""
        if self.mask is None:
            return None
        key = ("bias", dtype)
        if key not in self._cache:
            zero = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
            self._cache[key] = zero.masked_fill(~self.mask, float("-inf"))
        return self._cache[key]

    def to(self, device: torch.device | str) -> AttnBatch:
        """This step's metadata on `device` (built on the driver, used where the block runs)."""
        dev = torch.device(device)
        if self.positions.device == dev:
            return self
        return AttnBatch(self.positions.to(dev), self.slots.to(dev), self.query_lens,
                         self.context_lens, self.page_tables.to(dev),
                         None if self.mask is None else self.mask.to(dev), self.fresh_prefill)

    @classmethod
    def build(cls, table: PageTable, seq_ids: list[int], query_lens: list[int],
              device: torch.device | str = "cpu") -> AttnBatch:
        """Reserve room for the new tokens in `table` and describe the step.

        Raises `OutOfPages` (before touching any sequence's state) if the pool is too small.
        """
        need = sum(table.pages_needed(s, n) for s, n in zip(seq_ids, query_lens, strict=True))
        if need > table.free_pages:
            raise OutOfPages(f"step needs {need} pages, {table.free_pages} free")
        for s, n in zip(seq_ids, query_lens):
            table.append(s, n)
        return cls.describe(table, seq_ids, query_lens, device)

    @classmethod
    def describe(cls, table: PageTable, seq_ids: list[int], query_lens: list[int],
                 device: torch.device | str = "cpu") -> AttnBatch:
        """The step whose new tokens are the last `query_lens[b]` already in `table`."""
        positions: list[int] = []
        slots: list[int] = []
        ctx: list[int] = []
        ps = table.page_size
        pages = [table.pages(s) for s in seq_ids]
        for s, n, pg in zip(seq_ids, query_lens, pages, strict=True):
            end = table.length(s)
            positions.extend(range(end - n, end))
            slots.extend(pg[i // ps] * ps + i % ps for i in range(end - n, end))
            ctx.append(end)
        width = max(len(p) for p in pages)
        page_tables = torch.tensor([p + [0] * (width - len(p)) for p in pages], dtype=torch.long)
        fresh = len(seq_ids) == 1 and query_lens[0] == ctx[0]
        mask = None
        if not fresh and not (len(seq_ids) == 1 and query_lens[0] == 1):
            mask = _mask(query_lens, ctx)
        return cls(
            positions=torch.tensor(positions, dtype=torch.long, device=device),
            slots=torch.tensor(slots, dtype=torch.long, device=device),
            query_lens=tuple(query_lens),
            context_lens=tuple(ctx),
            page_tables=page_tables.to(device),
            mask=None if mask is None else mask.to(device),
            fresh_prefill=fresh,
        )


def _mask(query_lens: list[int], context_lens: list[int]) -> torch.Tensor:
    """(B, 1, max_q, max_ctx) bool: query i of sequence b sees key j iff j <= its position."""
    max_q, max_ctx = max(query_lens), max(context_lens)
    q_idx = torch.arange(max_q)[None, :, None]
    k_idx = torch.arange(max_ctx)[None, None, :]
    ql = torch.tensor(query_lens)[:, None, None]
    cl = torch.tensor(context_lens)[:, None, None]
    q_pos = cl - ql + q_idx  # absolute position of each query row
    allowed = (k_idx <= q_pos) & (q_idx < ql)
    allowed |= (q_idx >= ql) & (k_idx == 0)  # padded query rows: keep softmax finite
    return allowed[:, None]


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pool: KVPool,
                    layer: int, batch: AttnBatch) -> torch.Tensor:
    """q: (T, H, D); k, v: (T, H_kv, D) for the new tokens. Returns (T, H, D).

    Writes the new K/V into the pool, then attends over each sequence's whole context.
    """
    pool.write(layer, k, v, batch.slots)
    n_heads, head_dim = q.shape[1], q.shape[2]
    if batch.fresh_prefill:  # no earlier KV: attend over the new tokens directly
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            is_causal=True, enable_gqa=True)
        return out[0].transpose(0, 1)
    bsz = len(batch.query_lens)
    kk, vv = pool.gather(layer, batch.page_tables, max(batch.context_lens))  # (B, L, H_kv, D)
    max_q = max(batch.query_lens)
    if max_q == 1:
        qq = q[:, None]  # (B, 1, H, D)
    else:
        qq = q.new_zeros(bsz, max_q, n_heads, head_dim)
        rows = _row_index(batch.query_lens, q.device)
        qq.view(-1, n_heads, head_dim)[rows] = q
    out = F.scaled_dot_product_attention(
        qq.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2),
        attn_mask=batch.bias(qq.dtype), enable_gqa=True)  # (B, H, max_q, D)
    out = out.transpose(1, 2)
    if max_q == 1:
        return out[:, 0]
    return out.reshape(-1, n_heads, head_dim)[_row_index(batch.query_lens, q.device)]


def _row_index(query_lens: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Flat rows of the (B, max_q) padded layout that hold real tokens, in token order."""
    max_q = max(query_lens)
    return torch.cat([torch.arange(n, device=device) + b * max_q
                      for b, n in enumerate(query_lens)])
