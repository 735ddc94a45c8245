"""A decoder block's decode step in one native call (kernels/decode_layers.cpp): every layer's
norms, matmuls, RoPE, KV write and paged attention, in the order of the Python path in
models.llama (which stays the path for prompt chunks, mixed steps, LoRA, packed weights,
bfloat16, CUDA graphs and GPUs). Measured reason: at batch 1 on 2 CPU cores the matmuls of a
SmolLM2 token take ~17 of ~22 ms, and most of the rest is ten Python calls per layer.
"""

from __future__ import annotations

import torch

from blockllm.kernels import decode_layers
from blockllm.models.attention import AttnBatch
from blockllm.models.kv_cache import KVPool

ENABLED = True  # off: always the Python path (tests compare the two)


def _weights(block) -> tuple[list[torch.Tensor], ...] | None:
    """Per layer: input norm, fused q/k/v, o, post-attention norm, fused gate/up, down; None
    where a layer's matmul weights are not plain float32 (packed, unfused, trainable). Cached
    on the block: the norms as their Parameters (a `.to()` swaps their data in place), the
    fused matrices as `fuse_` left them; whatever replaces one drops the cache, as fuse_ does."""
    cached = block.__dict__.get("_fused_weights")
    if cached is not None:
        return cached or None
    rows = []
    for layer in block.layers:
        att, mlp = layer.self_attn, layer.mlp
        ws = [layer.input_layernorm.weight, getattr(att, "qkv_weight", None),
              getattr(att, "o_weight", None), layer.post_attention_layernorm.weight,
              getattr(mlp, "gate_up_weight", None), getattr(mlp, "down_weight", None)]
        if any(w is None or w.is_mkldnn or w.dtype != torch.float32 or not w.is_contiguous()
               or w.requires_grad for w in ws):
            block.__dict__["_fused_weights"] = ()
            return None
        rows.append(ws)
    block.__dict__["_fused_weights"] = tuple(list(col) for col in zip(*rows, strict=True))
    return block.__dict__["_fused_weights"]


def decode_step(block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pool: KVPool,
                batch: AttnBatch, lora, skinny_rows: int) -> torch.Tensor | None:
    """The block's output for a step whose every row is one sequence's decode, or None where
    this step or block takes the Python path."""
    if not ENABLED or lora is not None or x.device.type != "cpu" or x.dtype != torch.float32 \
            or x.requires_grad or not x.is_contiguous() or not batch.decodes \
            or batch.decode_rows is not None or batch.write_rows is not None \
            or batch.static_width is not None or len(batch.query_lens) != x.shape[0] \
            or not (cos.is_contiguous() and sin.is_contiguous()) or not block.layers \
            or pool.kv.dtype != torch.float32 or pool.kv.device.type != "cpu":
        return None
    kernel = decode_layers()
    weights = _weights(block) if kernel is not None else None
    if weights is None:
        return None
    cfg = block.cfg
    return kernel(x, *weights, pool.kv, batch.slots, batch.page_tables, batch.decode_lens, cos,
                  sin, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rms_norm_eps,
                  cfg.head_dim ** -0.5, skinny_rows)
