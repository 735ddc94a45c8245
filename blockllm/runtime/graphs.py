"""CUDA graphs of a decoder block's decode steps (issue 15, item 6).

A decode step of a segment of L layers launches about 15 kernels per layer; on a GPU their
launches, not the weights' bytes, set its time at small batches (an H100 measured 0.8-0.9 ms
per one-layer call whatever the batch). A graph records a step's kernels once and replays
them with one launch. Shapes must not change between replays, so a graph serves one
*bucket*: a batch of up to `rows` decodes (one new token each) whose page tables are at most
`pages` wide. Its inputs live in static buffers that each call fills:

* rows past the batch's own repeat its first row's metadata and write that row's K/V again
  to that row's slot (`AttnBatch.write_rows`): the pool is never touched elsewhere;
* attention reads `pages` pages of every row and masks past each row's length
  (`AttnBatch.static_width`), so nothing depends on the lengths but their values.

A bucket is captured the first time a batch needs it: the real step runs eagerly on the
static buffers (warming kernels and the allocator; its K/V writes are the step's own), is
captured, and replayed for the result, so a capture never writes a wrong K/V. Graphs hold
the worker's weights and the pool's tensor: a new worker (a load) starts without graphs, and
a pool that moved clears them. Prompt chunks, mixed batches, LoRA and batches past the
largest bucket run eagerly. `capture=False` runs the same static buffers without capture:
the path is tested on a CPU that way, and on a GPU with capture.
"""

from __future__ import annotations

import torch

from blockllm.models.attention import AttnBatch
from blockllm.models.kv_cache import KVPool

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # decodes per step
MIN_PAGES = 4  # the narrowest page-table bucket; wider ones double


def bucket_of(n: int, buckets: tuple[int, ...] = ROW_BUCKETS) -> int | None:
    """The smallest bucket holding n, None past the largest."""
    return next((b for b in buckets if b >= n), None)


def pages_bucket(n: int) -> int:
    b = MIN_PAGES
    while b < n:
        b *= 2
    return b


class _Static:
    """One bucket's input and output buffers, and its graph (None: run eagerly). The integer
    inputs are views of one buffer, filled by one copy per call from a host buffer (pinned on
    a GPU, so the copy does not wait for the device; an event keeps the next call from
    refilling it before the copy has read it)."""

    def __init__(self, rows: int, pages: int, hidden: int, dtype: torch.dtype,
                 device: torch.device):
        self.rows, self.pages = rows, pages
        self.x = torch.zeros(rows, hidden, dtype=dtype, device=device)
        self.meta = torch.zeros(4 * rows + rows * pages, dtype=torch.long, device=device)
        cuda = device.type == "cuda"
        self.host = torch.zeros(self.meta.shape, dtype=torch.long, pin_memory=cuda)
        self.copied = torch.cuda.Event() if cuda else None
        self.positions, self.slots, self.write_rows, self.lens = self.meta[:4 * rows].view(4, rows)
        self.tables = self.meta[4 * rows:].view(rows, pages)
        self.out: torch.Tensor | None = None
        self.graph: object | None = None

    def attn(self, page_size: int) -> AttnBatch:
        """A fresh step description over the buffers (its rope and mask caches empty, so a
        capture records their computation)."""
        width = self.pages * page_size
        return AttnBatch(self.positions, self.slots, (1,) * self.rows, (width,) * self.rows,
                         self.tables, tuple(range(self.rows)), None, self.lens, width,
                         self.write_rows)


class DecodeGraphs:
    """The graphs of one decoder worker's module, by (rows, pages) bucket."""

    def __init__(self, module: torch.nn.Module, device: torch.device, capture: bool):
        self.module, self.device, self.capture = module, device, capture
        self.buckets: dict[tuple[int, int], _Static] = {}
        self._pool_kv: torch.Tensor | None = None  # the pool tensor the graphs write
        self._mempool = torch.cuda.graph_pool_handle() if capture else None
        self._sources: dict[tuple[int, int], torch.Tensor] = {}  # (n, rows) -> source rows
        #                                                           (on the host)
        self._stream = None  # the capture stream, on this worker's device
        self.steps = self.captures = self.replays = 0

    def fits(self, attn: AttnBatch, lora) -> bool:
        """Whether a step can run here: decodes only, no adapter, within the largest bucket."""
        return (lora is None and attn.decode_rows is None and
                len(attn.decodes) == len(attn.query_lens) and
                bucket_of(len(attn.decodes)) is not None)

    def run(self, x: torch.Tensor, pool: KVPool, attn: AttnBatch) -> torch.Tensor:
        """The step's hidden states out (B, hidden), as the module would compute them."""
        if self._pool_kv is not pool.kv:  # a new or moved pool: graphs wrote the old one
            self.buckets.clear()
            self._pool_kv = pool.kv
        n = x.shape[0]
        rows, pages = bucket_of(n), pages_bucket(attn.page_tables.shape[1])
        st = self.buckets.get((rows, pages))
        if st is None:
            st = self.buckets[(rows, pages)] = self._new(rows, pages, x)
        self._fill(st, x, attn, n)
        self.steps += 1
        if st.graph is None:
            if not self.capture:
                return self.module(st.x, pool, st.attn(pool.layout.page_size))[:n].clone()
            self._capture(st, pool)
        st.graph.replay()
        self.replays += 1
        return st.out[:n].clone()

    def _new(self, rows: int, pages: int, x: torch.Tensor) -> _Static:
        return _Static(rows, pages, x.shape[1], x.dtype, self.device)

    def _fill(self, st: _Static, x: torch.Tensor, attn: AttnBatch, n: int) -> None:
        """Copy the step into the buffers, its integers laid out on the host first (one copy
        to the device); rows past n repeat row 0."""
        rows, pages = st.rows, st.pages
        if attn.positions.device.type != "cpu":
            attn = attn.to("cpu")
        src = self._sources.get((n, rows))
        if src is None:
            src = self._sources[(n, rows)] = torch.tensor(list(range(n)) + [0] * (rows - n))
        if st.copied is not None:
            st.copied.synchronize()  # the last call's copy has read the host buffer
        head, tables = st.host[:4 * rows].view(4, rows), st.host[4 * rows:].view(rows, pages)
        for i, v in enumerate((attn.positions, attn.slots, src, attn.decode_lens)):
            torch.index_select(v, 0, src, out=head[i])
        tables.zero_()
        tables[:, :attn.page_tables.shape[1]] = attn.page_tables.index_select(0, src)
        st.meta.copy_(st.host, non_blocking=st.copied is not None)
        if st.copied is not None:
            st.copied.record()
        st.x[:n].copy_(x)

    def _capture(self, st: _Static, pool: KVPool) -> None:
        ps = pool.layout.page_size
        if self._stream is None:  # (torch.cuda.graph's default stream is made once, on
            self._stream = torch.cuda.Stream(self.device)  # whichever device was current)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: this step's own result and K/V writes
            self.module(st.x, pool, st.attn(ps))
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._mempool, stream=self._stream):
            st.out = self.module(st.x, pool, st.attn(ps))
        st.graph = graph
        self.captures += 1
