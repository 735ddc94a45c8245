"""Run one model's chain of blocks in one process: the reference path for `blockllm generate`.

The serving engine (blockllm/runtime) schedules blocks of many chains; this runner executes a
single chain for a batch of prompts, which is what parity tests and the CLI need. Every decoder
block owns a KV pool; here all pools are filled in lock-step, so one page table describes them.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from blockllm.errors import UserError
from blockllm.kernels import skinny_linear
from blockllm.models.attention import AttnBatch
from blockllm.models.config import LlamaConfig
from blockllm.models.kv_cache import KVLayout, KVPool, PageTable
from blockllm.models.llama import DecoderBlock, EmbeddingBlock, HeadBlock, StitchBlock
from blockllm.models.lora import LoraAdapter, LoraSegments
from blockllm.models.rope import inv_frequencies
from blockllm.models.sampling import Pick, SamplingParams, pick


class BlockWeights(Protocol):
    """What building a block module needs: a zoo `Block` has these."""

    kind: str
    signature: dict
    tensors: dict[str, torch.Tensor]


def build_block(cfg: LlamaConfig, kind: str, tensors: dict[str, torch.Tensor], *,
                n_layers: int = 0, device="cpu", dtype=torch.float32,
                tied_embedding: torch.Tensor | None = None, pack: bool = False) -> nn.Module:
    """An nn.Module for a block, its weights moved (not copied twice) to device/dtype.
    `pack`: matmul weights in oneDNN's layout (models.llama.pack_weight; callers decide with
    `packable`, on the host that runs the block): the decoders' and an untied head's in place;
    a tied model's embedding keeps its rows for the lookup and a packed copy for the logits."""
    with torch.device("meta"):
        if kind == "embed":
            mod = EmbeddingBlock(cfg)
        elif kind == "decoder":
            mod = DecoderBlock(cfg, n_layers)
        elif kind == "head":
            mod = HeadBlock(cfg, tied_embedding=torch.empty(0) if cfg.tie_word_embeddings else None)
        elif kind == "stitch":
            w = tensors["proj.weight"]
            mod = StitchBlock(w.shape[1], w.shape[0])
        else:
            raise ValueError(f"cannot build a module for block kind {kind!r}")
    state = {k: nn.Parameter(v.to(device, dtype), requires_grad=False) for k, v in tensors.items()}
    mod.load_state_dict(state, strict=True, assign=True)
    if kind == "decoder":
        mod.inv_freq = inv_frequencies(cfg).to(device)
        mod.fuse_(pack)
    elif pack and kind == "head":
        mod.pack_()
    elif pack and kind == "embed" and cfg.tie_word_embeddings:
        mod.pack_()  # a packed copy for the tied heads' logits
    if kind == "head" and cfg.tie_word_embeddings:
        mod.tied_weight = tied_embedding
    return mod.eval()


def packable(device, dtype: torch.dtype) -> bool:
    """Whether CPU matmuls in `dtype` are faster with weights in oneDNN's packed layout:
    bfloat16 where the CPU has oneDNN's bf16 path (AVX-512 BF16/VNNI or AVX-NE-CONVERT; not on
    AVX2-only CPUs); float32 where the native skinny kernel is not built. Where it is (AVX-512
    or AVX2), float32 weights stay plain: a decode step's rows (up to SKINNY_ROWS) take that
    kernel, which beat or tied packed up to 24 rows on both CPUs measured, and longer steps take
    MKL (AVX-512: tied with packed at 128 rows) or oneDNN on the plain layout (AVX2: 1.1x
    packed at 128 rows) (benchmarks.matmul_layout); the tied embedding needs no packed copy."""
    if torch.device(device).type != "cpu":
        return False
    if dtype == torch.float32:
        return skinny_linear() is None
    return dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class ChainModel:
    """A chain of blocks: embed, then stages (decoder blocks, each with an optional LoRA adapter,
    or stitch blocks), then head. Tied heads use the chain's own embedding matrix."""

    def __init__(self, cfg: LlamaConfig, chain: list[tuple[BlockWeights, BlockWeights | None]],
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 page_size: int = 16):
        self.cfg, self.device = cfg, torch.device(device)
        self.dtype, self.page_size = dtype, page_size
        (embed, _), *middle, (head, _) = chain
        self.embed = build_block(cfg, "embed", embed.tensors, device=device, dtype=dtype)
        # (module, its adapter, its pool)
        self.stages: list[tuple[nn.Module, LoraAdapter | None, int | None]] = []
        n_pools = 0
        for blk, adapter in middle:
            mod = build_block(cfg, blk.kind, blk.tensors, device=device, dtype=dtype,
                              n_layers=blk.signature.get("n_layers", 0))
            lora = None if adapter is None else LoraAdapter(
                adapter.tensors, adapter.signature["scaling"]).to(device, dtype)
            pool = None
            if blk.kind == "decoder":
                pool, n_pools = n_pools, n_pools + 1
            self.stages.append((mod, lora, pool))
        self.head = build_block(cfg, "head", head.tensors, device=device, dtype=dtype,
                                tied_embedding=self.embed.embed_tokens.weight)
        self.pools: list[KVPool] = []
        self.table = PageTable(0, page_size)

    @property
    def decoders(self) -> list[DecoderBlock]:
        return [m for m, _, pool in self.stages if pool is not None]

    def reserve(self, total_tokens: int) -> None:
        """Size every pool for `total_tokens` tokens of KV (frees whatever was cached)."""
        pages = -(-total_tokens // self.page_size)
        if self.pools and self.pools[0].layout.num_pages >= pages:  # reuse the bigger pools
            self.table = PageTable(self.pools[0].layout.num_pages, self.page_size)
            return
        self.table = PageTable(pages, self.page_size)
        self.pools = [KVPool(KVLayout(len(d.layers), pages, self.page_size,
                                      self.cfg.num_key_value_heads, self.cfg.head_dim),
                             self.dtype, self.device) for d in self.decoders]

    @torch.inference_mode()
    def step(self, seq_ids: list[int], tokens: list[list[int]], all_logits: bool = False
             ) -> torch.Tensor:
        """Append `tokens[b]` to sequence `seq_ids[b]`; return (B, vocab) logits of each last
        token, or (T, vocab) logits of every new token with `all_logits`."""
        qlens = [len(t) for t in tokens]
        batch = AttnBatch.build(self.table, seq_ids, qlens, self.device)
        ids = torch.tensor([i for t in tokens for i in t], dtype=torch.long, device=self.device)
        h = self.embed(ids)  # (T, hidden)
        for mod, adapter, pool in self.stages:
            if self._trace is not None:
                self._trace.append(h)
            if pool is None:
                h = mod(h)
            else:
                h = mod(h, self.pools[pool], batch, LoraSegments.single(adapter, h.shape[0]))
        if self._trace is not None:
            self._trace.append(h)
        if all_logits:
            return self.head(h)
        last = torch.tensor(qlens, device=self.device).cumsum(0) - 1
        return self.head(h[last])  # (B, vocab)

    _trace: list[torch.Tensor] | None = None

    def trace(self, ids: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states (T, hidden) entering each stage, then the head's input, and the logits."""
        self._trace = []
        try:
            logits = self.prompt_logits(ids)
            return self._trace, logits
        finally:
            self._trace = None

    def prompt_logits(self, ids: list[int]) -> torch.Tensor:
        """(len(ids), vocab) logits of a fresh sequence: row i predicts token i + 1."""
        self.reserve(len(ids))
        return self.step([0], [ids], all_logits=True)

    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 params: SamplingParams = SamplingParams(), stop_ids: tuple[int, ...] | None = None
                 ) -> list[list[int]]:
        """Prefill each prompt, then decode all together until max_new_tokens or a stop id."""
        limit = self.cfg.max_position_embeddings
        for p in prompts:
            if not p:
                raise UserError("the prompt is empty")
            if len(p) + max_new_tokens > limit:
                raise UserError(f"prompt of {len(p)} tokens + {max_new_tokens} new tokens "
                                f"exceeds the context length {limit}: shorten the prompt or "
                                f"lower --max-tokens")
        stop = set(self.cfg.eos_token_ids if stop_ids is None else stop_ids)
        self.reserve(sum(-(-(len(p) + max_new_tokens) // self.page_size) * self.page_size
                         for p in prompts))
        outs: list[list[int]] = [[] for _ in prompts]
        live = list(range(len(prompts)))
        nxt = {}

        def picks(rows: list[int]) -> list[Pick]:  # as the engine picks (Request.pick)
            return [Pick.of(params, prompts[b], outs[b]) for b in rows]
        for b in live:  # prefill one prompt at a time: no padding waste
            nxt[b] = _token(pick(self.step([b], [prompts[b]]), picks([b]))[0])
        while live and max_new_tokens > 0:
            for b in live:
                outs[b].append(nxt[b])
            live = [b for b in live if nxt[b] not in stop and len(outs[b]) < max_new_tokens]
            if not live:
                break
            logits = self.step(live, [[nxt[b]] for b in live])
            for b, out in zip(live, pick(logits, picks(live)), strict=True):
                nxt[b] = _token(out)
        return outs


def _token(out) -> int:
    """A picked token's id (a TokenLogprob where logprobs were asked)."""
    return out if isinstance(out, int) else out.token
