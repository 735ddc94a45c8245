"""Cut a model into blocks and give each block a content address.

A block id is the sha256 of its signature (what the block computes besides its tensors: kind,
shapes, RoPE, eps, ...) and of each tensor's name, dtype, shape and bytes. Decoder layers are
numbered from 0 inside their block, so the same layer of two models hashes to the same id
wherever it sits. A model is a chain: embed, decoder blocks, head; each decoder block may
carry one LoRA adapter block.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from blockllm.loaders.source import LoraSource, ModelSource
from blockllm.models.config import LlamaConfig


@dataclass(frozen=True)
class Block:
    kind: str  # embed | decoder | head | lora
    signature: dict[str, Any]  # see LlamaConfig.block_signature
    tensors: dict[str, torch.Tensor]  # names as the block's nn.Module state_dict
    id: str  # sha256 hex of signature + tensors

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass(frozen=True)
class ChainEntry:
    block: str  # block id
    adapter: str | None = None  # id of a LoRA block applied inside this (decoder) block


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, any dtype (bf16 included), without a copy."""
    t = t.detach().contiguous().cpu()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def block_id(signature: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(signature, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def make_block(kind: str, signature: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Block:
    return Block(kind, signature, tensors, block_id(signature, tensors))


def layer_spans(n_layers: int, layers_per_block: int) -> list[tuple[int, int]]:
    if layers_per_block < 1:
        raise ValueError("layers_per_block must be >= 1")
    return [(s, min(s + layers_per_block, n_layers)) for s in range(0, n_layers, layers_per_block)]


def _sub(tensors: dict[str, torch.Tensor], start: int, end: int) -> dict[str, torch.Tensor]:
    """`model.layers.{i}.rest` for start <= i < end, renamed `layers.{i - start}.rest`."""
    out = {}
    for name, t in tensors.items():
        parts = name.split(".")
        if parts[:2] == ["model", "layers"] and start <= int(parts[2]) < end:
            out[f"layers.{int(parts[2]) - start}." + ".".join(parts[3:])] = t
    return out


def partition(src: ModelSource, layers_per_block: int = 1) -> tuple[list[Block], list[ChainEntry]]:
    """Blocks (in chain order, adapters after the block they modify) and the chain."""
    cfg: LlamaConfig = src.config
    t = src.tensors
    blocks: list[Block] = []
    chain: list[ChainEntry] = []
    embed = make_block("embed", cfg.block_signature("embed"),
                       {"embed_tokens.weight": t["model.embed_tokens.weight"]})
    blocks.append(embed)
    chain.append(ChainEntry(embed.id))
    spans = layer_spans(cfg.num_hidden_layers, layers_per_block)
    adapters = adapter_blocks(src.adapter, cfg, layers_per_block)
    for (start, end), adapter in zip(spans, adapters, strict=True):
        dec = make_block("decoder", cfg.block_signature("decoder", end - start),
                         _sub(t, start, end))
        blocks.append(dec)
        if adapter is not None:
            blocks.append(adapter)
        chain.append(ChainEntry(dec.id, adapter.id if adapter else None))
    head_t = {"norm.weight": t["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        head_t["lm_head.weight"] = t["lm_head.weight"]
    head = make_block("head", cfg.block_signature("head"), head_t)
    blocks.append(head)
    chain.append(ChainEntry(head.id))
    return blocks, chain


def adapter_blocks(adapter: LoraSource | None, cfg: LlamaConfig, layers_per_block: int
                   ) -> list[Block | None]:
    """One LoRA block per decoder block the adapter modifies (None where it leaves it alone)."""
    out: list[Block | None] = []
    for start, end in layer_spans(cfg.num_hidden_layers, layers_per_block):
        tensors = _sub(adapter.tensors, start, end) if adapter is not None else {}
        if not tensors:
            out.append(None)
            continue
        sig = dict(cfg.block_signature("lora"), n_layers=end - start, rank=adapter.rank,
                   scaling=adapter.scaling)
        out.append(make_block("lora", sig, tensors))
    return out


def concat_decoders(blocks: list[Block], block_id: str) -> Block:
    """Decoder blocks run back to back as one block (a segment, see runtime/segments.py): their
    layers renumbered in order, `layers.{offset + j}`. Each part was hash-checked when read;
    the result is named `block_id`, not hashed again."""
    if not blocks or any(b.kind != "decoder" for b in blocks):
        raise ValueError("only decoder blocks are concatenated")
    tensors, offset = {}, 0
    for b in blocks:
        for name, t in b.tensors.items():
            _, j, rest = name.split(".", 2)
            tensors[f"layers.{offset + int(j)}.{rest}"] = t
        offset += b.signature["n_layers"]
    return Block("decoder", {**blocks[0].signature, "n_layers": offset}, tensors, block_id)
