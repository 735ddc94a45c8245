"""Per-step attention metadata over a paged pool, and attention that reads the pool.

A step runs T new tokens of B sequences flattened along one axis (like vLLM): hidden states
are (T, hidden). Sequence b contributes `query_lens[b]` tokens, and after the step holds
`context_lens[b]` tokens of KV. Built once per step and block, shared by the block's layers.

Attention splits the step's sequences in two:
* decodes (one new token each) run together through a kernel that reads each sequence's
  pages of the pool in place (`blockllm.kernels.paged_decode` on a CPU, the Triton one on a
  GPU); where none is available (no compiler or Triton, BLOCKLLM_NATIVE=0 or
  BLOCKLLM_TRITON=0) their pages are gathered into dense tensors for one SDPA call, masked
  past each sequence's length;
* prompt chunks (several new tokens) run one sequence at a time through SDPA: a chunk with no
  earlier KV attends causally over its own new K/V; a later chunk gathers its own pages and
  attends with a bottom-right causal mask. Nothing is padded to the longest query.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from blockllm.kernels import paged_decode
from blockllm.models.gpu_kernels import gpu_kernels
from blockllm.models.kv_cache import KVPool, OutOfPages, PageTable
from blockllm.models.rope import cos_sin


@dataclass
class AttnBatch:
    positions: torch.Tensor  # (T,) long: position of each new token in its sequence
    slots: torch.Tensor  # (T,) long: pool slot that each new token's K/V is written to
    query_lens: tuple[int, ...]  # new tokens per sequence (sum == T)
    context_lens: tuple[int, ...]  # KV length per sequence after this step
    page_tables: torch.Tensor  # (B, max_pages) long, padded with page 0
    decodes: tuple[int, ...]  # the sequences with one new token, in order
    decode_rows: torch.Tensor | None  # (len(decodes),) their token rows; None: every row
    decode_lens: torch.Tensor  # (len(decodes),) long: their context lengths
    static_width: int | None = None  # a CUDA graph's step (runtime/graphs.py): every decode
    #   reads this many tokens of KV (its page tables' width), masked past its length, so no
    #   shape depends on the lengths; context_lens are then not read
    write_rows: torch.Tensor | None = None  # (T,) the row whose K/V each row writes: a
    #   graph's padding rows rewrite a real row's K/V into its slot (None: each its own)
    _cache: dict = field(default_factory=dict, repr=False)  # per-step caches: (rope key, dtype)
    #                                                      -> (cos, sin); masks by dtype

    @property
    def prefills(self) -> tuple[tuple[int, int, int, int], ...]:
        """(sequence, first token row, new tokens, context length) of each prompt chunk."""
        out, row = [], 0
        for b, (n, ctx) in enumerate(zip(self.query_lens, self.context_lens, strict=True)):
            if n > 1:
                out.append((b, row, n, ctx))
            row += n
        return tuple(out)

    def rope(self, inv_freq: torch.Tensor, dtype: torch.dtype, rope_key: Hashable
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, head_dim) of this step's positions; computed once per distinct RoPE
        (`rope_key` names the RoPE config that produced `inv_freq`)."""
        key = (rope_key, dtype)
        if key not in self._cache:
            self._cache[key] = cos_sin(inv_freq, self.positions, dtype)
        return self._cache[key]

    def decode_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """(Bd, 1, 1, max_ctx) additive mask (0 or -inf) past each decode's length, for the
        gather path; None when all have the same length. Made once per step and dtype.

        SDPA gets a float bias rather than a boolean mask: on an H100 a boolean mask sent
        PyTorch 2.11 to a backend that builds a plan for every new shape (50 ms per call,
        measured), and shapes change every step; a float bias costs 27-40 us per call."""
        if self.static_width is None:
            lens = [self.context_lens[b] for b in self.decodes]
            if min(lens) == max(lens):
                return None
        key = ("decode", dtype)
        if key not in self._cache:
            width = self.static_width or max(self.context_lens[b] for b in self.decodes)
            k_idx = torch.arange(width, device=self.decode_lens.device)
            past = k_idx[None, :] >= self.decode_lens[:, None]
            bias = torch.zeros(past.shape, dtype=dtype, device=past.device)
            self._cache[key] = bias.masked_fill(past, float("-inf"))[:, None, None]
        return self._cache[key]

    def chunk_bias(self, b: int, dtype: torch.dtype) -> torch.Tensor:
        """(n, ctx) additive mask of sequence b's chunk over its whole context: query i (at
        position ctx - n + i) sees keys 0..ctx - n + i."""
        key = ("chunk", b, dtype)
        if key not in self._cache:
            n, ctx = self.query_lens[b], self.context_lens[b]
            dev = self.positions.device
            seen = torch.arange(ctx, device=dev)[None, :] <= \
                torch.arange(ctx - n, ctx, device=dev)[:, None]
            bias = torch.zeros(seen.shape, dtype=dtype, device=dev)
            self._cache[key] = bias.masked_fill(~seen, float("-inf"))
        return self._cache[key]

    def to(self, device: torch.device | str) -> AttnBatch:
        """This step's metadata on `device` (built on the driver, used where the block runs)."""
        dev = torch.device(device)
        if self.positions.device == dev:
            return self
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(dev, non_blocking=dev.type == "cuda")
        return AttnBatch(move(self.positions), move(self.slots), self.query_lens,
                         self.context_lens, move(self.page_tables), self.decodes,
                         move(self.decode_rows), move(self.decode_lens), self.static_width,
                         move(self.write_rows))

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
        decodes = tuple(b for b, n in enumerate(query_lens) if n == 1)
        rows = None
        if len(decodes) < len(query_lens):
            starts = [0]
            for n in query_lens[:-1]:
                starts.append(starts[-1] + n)
            rows = torch.tensor([starts[b] for b in decodes], dtype=torch.long, device=device)
        return cls(
            positions=torch.tensor(positions, dtype=torch.long, device=device),
            slots=torch.tensor(slots, dtype=torch.long, device=device),
            query_lens=tuple(query_lens),
            context_lens=tuple(ctx),
            page_tables=page_tables.to(device),
            decodes=decodes,
            decode_rows=rows,
            decode_lens=torch.tensor([ctx[b] for b in decodes], dtype=torch.long, device=device),
        )


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pool: KVPool,
                    layer: int, batch: AttnBatch) -> torch.Tensor:
    """q: (T, H, D); k, v: (T, H_kv, D) for the new tokens. Returns (T, H, D).

    Writes the new K/V into the pool, then attends over each sequence's whole context (see
    the module doc for how decodes and prompt chunks are told apart)."""
    if batch.write_rows is not None:
        k, v = k[batch.write_rows], v[batch.write_rows]
    pool.write(layer, k, v, batch.slots)
    if not batch.decodes or batch.decode_rows is not None:
        out = torch.empty_like(q)
        for b, row, n, ctx in batch.prefills:
            out[row:row + n] = _chunk(q[row:row + n], k[row:row + n], v[row:row + n], pool,
                                      layer, batch, b, ctx)
        if not batch.decodes:
            return out
        rows = batch.decode_rows
        out[rows] = _decode(q[rows], pool, layer, batch)
        return out
    return _decode(q, pool, layer, batch)


def _decode(q: torch.Tensor, pool: KVPool, layer: int, batch: AttnBatch) -> torch.Tensor:
    """(Bd, H, D) queries of the step's decodes, one per sequence, over their contexts."""
    tables = batch.page_tables if len(batch.decodes) == len(batch.query_lens) else \
        batch.page_tables[list(batch.decodes)]
    kernel = _decode_kernel(q, pool, batch)
    if kernel is not None:
        k_cache, v_cache = pool.pages(layer)
        return kernel(q, k_cache, v_cache, tables, batch.decode_lens, q.shape[-1] ** -0.5)
    return paged_decode_reference(q, pool, layer, tables, batch)


def _decode_kernel(q: torch.Tensor, pool: KVPool, batch: AttnBatch):
    """A kernel that reads the pool in place: Triton on a GPU (page sizes of a power of two;
    it reads the lengths from their tensor, so a CUDA graph may replay it), the native one on
    a CPU (not for a graph's static step: that runs the gather path, as a GPU without Triton
    does); None: gather."""
    if q.device.type == "cuda":
        ps = pool.layout.page_size
        mod = gpu_kernels(q.dtype) if ps & (ps - 1) == 0 else None
        return None if mod is None else mod.paged_decode
    return paged_decode() if q.device.type == "cpu" and batch.static_width is None else None


def paged_decode_reference(q: torch.Tensor, pool: KVPool, layer: int, tables: torch.Tensor,
                           batch: AttnBatch) -> torch.Tensor:
    """The torch path of `_decode`: gather the pages into dense (Bd, L, H_kv, D) K/V, then one
    SDPA, masked past each sequence's length (also the native kernel's test reference)."""
    width = batch.static_width or max(batch.context_lens[b] for b in batch.decodes)
    kk, vv = pool.gather(layer, tables, width)
    out = F.scaled_dot_product_attention(
        q[:, None].transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2),
        attn_mask=batch.decode_bias(q.dtype), enable_gqa=True)  # (Bd, H, 1, D)
    return out[:, :, 0]


def _chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pool: KVPool, layer: int,
           batch: AttnBatch, b: int, ctx: int) -> torch.Tensor:
    """One sequence's prompt chunk, q: (n, H, D), over its context. With no earlier KV the
    chunk is its whole context: causal attention over its own new K/V, nothing read back."""
    n = q.shape[0]
    if ctx == n:
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            is_causal=True, enable_gqa=True)
        return out[0].transpose(0, 1)
    kk, vv = pool.gather(layer, batch.page_tables[b:b + 1], ctx)  # (1, ctx, H_kv, D)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], kk.transpose(1, 2), vv.transpose(1, 2),
        attn_mask=batch.chunk_bias(b, q.dtype), enable_gqa=True)  # (1, H, n, D)
    return out[0].transpose(0, 1)
