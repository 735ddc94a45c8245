"""A decoder block's decode step in one native call (kernels/decode_layers.cpp): every layer's
norms, matmuls, LoRA deltas, RoPE, KV write and paged attention, in the order of the Python
path in models.llama (which stays the path for prompt chunks, mixed steps, packed weights,
bfloat16, CUDA graphs and GPUs). Measured reason: at batch 1 on 2 CPU cores the matmuls of a
SmolLM2 token take ~17 of ~22 ms, and most of the rest is ten Python calls per layer (with
LoRA, four more per layer).
"""

from __future__ import annotations

import torch

from blockllm.kernels import decode_layers, plain_onednn
from blockllm.models.attention import AttnBatch
from blockllm.models.kv_cache import KVPool
from blockllm.models.lora import LoraSegments

ENABLED = True  # off: always the Python path (tests compare the two)
_NO_ROWS = torch.empty(0, dtype=torch.long)


def weight_lists(block) -> tuple[list[torch.Tensor], ...] | None:
    """Per kind, one tensor per layer: input norm, fused q/k/v, o, post-attention norm, fused
    gate/up, down (DecoderBlock.fuse_ keeps them); None where a layer's weights are not plain
    float32 on a CPU (packed, unfused, trainable, another device or dtype). The norms are their
    Parameters, so a `.to()` that swaps their data in place stays seen."""
    rows = []
    for layer in block.layers:
        att, mlp = layer.self_attn, layer.mlp
        ws = [layer.input_layernorm.weight, getattr(att, "qkv_weight", None),
              getattr(att, "o_weight", None), layer.post_attention_layernorm.weight,
              getattr(mlp, "gate_up_weight", None), getattr(mlp, "down_weight", None)]
        if any(w is None or w.is_mkldnn or w.dtype != torch.float32 or w.device.type != "cpu"
               or not w.is_contiguous() or w.requires_grad for w in ws):
            return None
        rows.append(ws)
    return tuple(list(col) for col in zip(*rows, strict=True)) if rows else None


def decode_step(block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pool: KVPool,
                batch: AttnBatch, lora: LoraSegments | None, skinny_rows: int
                ) -> torch.Tensor | None:
    """The block's output for a step whose every row is one sequence's decode, or None where
    this step or block takes the Python path."""
    if not ENABLED or x.device.type != "cpu" or x.dtype != torch.float32 \
            or x.requires_grad or not x.is_contiguous() or not batch.decodes \
            or batch.decode_rows is not None or batch.write_rows is not None \
            or batch.static_width is not None or len(batch.query_lens) != x.shape[0] \
            or not (cos.is_contiguous() and sin.is_contiguous()) \
            or pool.kv.dtype != torch.float32 or pool.kv.device.type != "cpu" \
            or (x.shape[0] > skinny_rows and plain_onednn()):  # its long steps call MKL
        return None
    kernel, weights = decode_layers(), block.fused_weights
    if kernel is None or weights is None:
        return None
    deltas = _lora_lists(block, lora, x.shape[0])
    if deltas is None:
        return None
    cfg = block.cfg
    return kernel(x, *weights, pool.kv, batch.slots, batch.page_tables, batch.decode_lens, cos,
                  sin, *deltas, cfg.num_attention_heads, cfg.num_key_value_heads,
                  cfg.rms_norm_eps, cfg.head_dim ** -0.5, skinny_rows)


def _lora_lists(block, lora: LoraSegments | None, n_rows: int) -> tuple | None:
    """The kernel's LoRA arguments: every adapter's joint A and Bt per layer and fused matmul
    (adapter-major), each row's adapter; None where an adapter is not plain float32 on a CPU
    (the Python path's torch deltas serve it)."""
    if lora is None:
        return [], [], _NO_ROWS
    cfg = block.cfg
    q, kv, inter = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * \
        cfg.head_dim, cfg.intermediate_size
    ins = (cfg.hidden_size, q, cfg.hidden_size, inter)
    outs = ((q, kv, kv), (cfg.hidden_size,), (inter, inter), (cfg.hidden_size,))
    la, lb = [], []
    for adapter in lora.adapters():
        a, b = adapter.fused_pairs(len(block.layers), ins, outs)
        if a and (a[0].dtype != torch.float32 or a[0].device.type != "cpu"):
            return None
        la += a
        lb += b
    return la, lb, lora.row_adapters(n_rows)
