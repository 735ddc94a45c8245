"""Block hosts: the blocks of one device, and the only runtime objects that hold tensors there.

A host owns its device's block workers, the KV pools of its decoder blocks and its LoRA
adapters. The engine (the scheduler, on the driver) decides what each host loads, drops and
runs; a host never decides anything. `LocalHost` runs in the engine's process (one per torch
device; several on one CPU for tests); `blockllm.runtime.ray_hosts.RayHost` runs a LocalHost
inside a Ray actor, so a host can be another process, GPU or node with the same calls.

Calls are `submit(...)` -> a handle, then `collect(handles)` -> the outputs of those finished.
A local host computes in `submit` (its handle is already done); a Ray host returns at once
and its device computes while the engine schedules the others.
"""

from __future__ import annotations


from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from blockllm.models.attention import AttnBatch
from blockllm.models.chain import packable
from blockllm.models.config import LlamaConfig
from blockllm.models.kv_cache import KVLayout, KVPool
from blockllm.models.lora import LoraAdapter
from blockllm.models.sampling import Pick
from blockllm.runtime.faults import maybe_slow_read
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.workers import BlockWorker, new_pool, profile_latency
from blockllm.zoo.partition import Block, concat_decoders
from blockllm.zoo.store import Zoo


@dataclass(frozen=True)
class BatchCall:
    """One block call, in plain data so it can cross to another process."""
    key: BlockKey
    inputs: list[torch.Tensor]  # ids (n_i,) for the embedding, else hidden (n_i, h)
    attn: AttnBatch | None = None  # decoder blocks: slots and page tables of this step
    adapters: tuple[str | None, ...] | None = None  # per request LoRA adapter id
    tied_key: BlockKey | None = None  # a tied head: the key of the embedding it reads
    kind: str = ""  # the block's kind (embed, decoder, stitch, head)
    picks: tuple[Pick, ...] | None = None  # head: how to pick each request's next token on
    #   the device (only ids and asked-for logprobs come back); None: greedy
    prompt_lp: tuple[tuple[tuple[int, ...], int] | None, ...] | None = None  # head: per
    #   request, (its prompt's next tokens, top k) where the prompt's logprobs are asked


class LocalHost:
    """One device's blocks, in this process."""

    def __init__(self, zoo: Zoo | str, device: str, dtype: str, index: int = 0,
                 pack: bool = False, graphs: str = "off"):
        self.zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
        self.index, self.device, self.dtype = index, torch.device(device), getattr(torch, dtype)
        # matmul weights in oneDNN's layout: EngineConfig.pack_weights where this host's own
        # CPU is faster so (models.chain.packable); the engine charges memory by it
        self.packs = pack and packable(self.device, self.dtype)
        self.graphs = graphs  # decode steps as CUDA graphs (EngineConfig.cuda_graphs)
        self.server = "local"  # the machine: every local host shares this process's links
        self.workers: dict[BlockKey, BlockWorker] = {}
        self.pools: dict[BlockKey, object] = {}  # decoder key -> KVPool (kept across reloads)
        self.adapters: dict[str | tuple, LoraAdapter] = {}  # by adapter id, or a segment's
        #                                                     ids and part sizes
        self.part_layers: dict[BlockKey, list[int]] = {}  # decoder key -> layers of each part
        self._pending: dict[BlockKey, tuple[Future, tuple]] = {}  # key -> (read, build args)
        self._reader: ThreadPoolExecutor | None = None

    # ---- what the engine tells it -------------------------------------------------------

    def load(self, key: BlockKey, parts: tuple[str, ...], cfg: LlamaConfig, kv_pages: int = 0,
             page_size: int = 16, wait: bool = True) -> None:
        """Build the worker of the zoo blocks `parts` (one block, or the decoder blocks of a
        segment, run as one: runtime/segments.py), each hash-checked, and, for a decoder seen
        for the first time, its KV pool of `kv_pages` pages. `wait=False` (a speculative
        load): the files are read and hashed on a background thread while blocks compute; the
        first call that needs the block waits for it, and gets its error if it failed."""
        rows = [self.zoo.block_info(b) for b in parts]  # the manifest: this thread only
        if rows[0].kind == "decoder":
            self.part_layers[key] = [r.signature["n_layers"] for r in rows]
        if wait:
            self._build(key, self._read(rows), (cfg, kv_pages, page_size))
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"blockllm-load-{self.index}")
        self._pending[key] = (self._reader.submit(self._read_later, rows),
                              (cfg, kv_pages, page_size))

    def _read_later(self, rows: list) -> Block:
        maybe_slow_read()
        return self._read(rows)

    def _read(self, rows: list) -> Block:
        blocks = [self.zoo.read_block(r) for r in rows]
        return blocks[0] if len(blocks) == 1 else concat_decoders(blocks, "+".join(
            b.id[:12] for b in blocks))

    def _build(self, key: BlockKey, block, args: tuple) -> None:
        cfg, kv_pages, page_size = args
        self.workers[key] = BlockWorker(cfg, block, self.device, self.dtype, self.packs,
                                        self.graphs)
        if block.kind == "decoder" and key not in self.pools:
            self.pools[key] = new_pool(cfg, block.signature["n_layers"], kv_pages, page_size,
                                       self.dtype, self.device)

    def _settle(self, key: BlockKey | None) -> None:
        """Finish a speculative load of `key` before its first use (raises what it raised)."""
        if key in self._pending:
            read, args = self._pending.pop(key)
            self._build(key, read.result(), args)

    def drop(self, key: BlockKey) -> None:
        """Free the block's weights (its KV pool stays: requests may still hold pages)."""
        self._pending.pop(key, None)
        self.workers.pop(key, None)

    def has(self, key: BlockKey) -> bool:
        return key in self.workers or key in self._pending

    def ready(self, key: BlockKey) -> bool:
        """A call of `key` would not wait for its background read (done, or failed)."""
        return key not in self._pending or self._pending[key][0].done()

    def reading(self) -> bool:
        """Some block's background read is still going on."""
        return any(not read.done() for read, _ in self._pending.values())

    def take_pool(self, key: BlockKey) -> tuple[KVLayout, torch.Tensor] | None:
        """Remove the block's KV pool from this device: (its layout, its tensor) (the block is
        moving: `put_pool` on its new device)."""
        pool = self.pools.pop(key, None)
        return None if pool is None else (pool.layout, pool.kv)

    def put_pool(self, key: BlockKey, layout: KVLayout, kv: torch.Tensor) -> None:
        self.pools[key] = KVPool.of(layout, kv.to(self.device))

    def profile(self, key: BlockKey) -> list[tuple[int, float]]:
        self._settle(key)
        return profile_latency(self.workers[key])

    def submit(self, call: BatchCall):
        """Run the call now; the handle is its outputs (or the exception it raised)."""
        try:
            return self.run(call)
        except Exception as e:  # noqa: BLE001 - handed to the engine, which isolates the block
            return e

    def collect(self, handles: list) -> list[int]:
        """Indices of `handles` that are done: a local handle is done when submitted."""
        return list(range(len(handles)))

    def result(self, handle) -> list[torch.Tensor]:
        if isinstance(handle, Exception):
            raise handle
        return handle

    def shutdown(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(cancel_futures=True)
        self._pending.clear()
        self.workers.clear()
        self.pools.clear()

    # ---- the one place a block runs -----------------------------------------------------

    def run(self, call: BatchCall) -> list[torch.Tensor]:
        self._settle(call.key)
        self._settle(call.tied_key)
        worker = self.workers[call.key]
        tied = None
        if call.tied_key is not None:
            tied = self.workers[call.tied_key].module.logits_weight()
        adapters = None
        if call.adapters and any(call.adapters):
            adapters = [self._adapter(a, call.key) if a else None for a in call.adapters]
        # one batch may gather hidden states from blocks on different devices; the step's
        # metadata stays on the host (the worker moves what it needs)
        inputs = [x.to(self.device) for x in call.inputs]
        return worker.run(inputs, self.pools.get(call.key), call.attn, adapters, tied,
                          call.picks, call.prompt_lp)

    def _adapter(self, spec: str | tuple[str | None, ...], key: BlockKey) -> LoraAdapter:
        """An adapter block on this device, or for a segment (`spec`: the adapter of each of
        its parts) those parts' adapters as one, layers renumbered along the segment."""
        # a stack's layers are numbered by its segment's parts: two segments with the same
        # adapters but other part sizes need stacks of their own
        cache = spec if isinstance(spec, str) else (spec, tuple(self.part_layers[key]))
        if cache not in self.adapters:
            if isinstance(spec, str):
                blk = self.zoo.load_block(spec)
                adapter = LoraAdapter(blk.tensors, blk.signature["scaling"])
            else:
                adapter = LoraAdapter.stack([(self._adapter(a, key) if a else None, n)
                                             for a, n in zip(spec, self.part_layers[key],
                                                             strict=True)])
            self.adapters[cache] = adapter.to(self.device, self.dtype)
        return self.adapters[cache]
