"""Llama-family model code, cut into blocks: embedding, runs of decoder layers, norm + LM head.

Each block is an `nn.Module` whose `state_dict()` names are exactly the tensor names a zoo
block stores (decoder layers are numbered from 0 inside their block, so the same layer at
different depths of different models hashes to the same id). Numerics follow transformers'
LlamaForCausalLM: RMSNorm in float32, RoPE computed in float32, SDPA attention.
Shapes: T = new tokens of all sequences in the step, flattened; H = heads; D = head_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blockllm.kernels import SKINNY_ROWS, plain_onednn, skinny_linear
from blockllm.models import fused_decode, ops
from blockllm.models.attention import AttnBatch, paged_attention
from blockllm.models.config import LlamaConfig
from blockllm.models.kv_cache import KVPool
from blockllm.models.lora import LoraSegments
from blockllm.models.rope import apply_rope, inv_frequencies

QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # one fused matmul
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")  # another


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)

    def add_(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual += x in place; returns the norm of the new residual (one fused pass)."""
        return ops.add_rms_norm_(residual, x, self.weight, self.eps)


def _linear(i: int, o: int) -> nn.Linear:
    lin = nn.Linear(i, o, bias=False)
    lin.weight.requires_grad_(False)
    return lin


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T, with `w` plain or packed by `pack_weight` (oneDNN's blocked layout). A decode
    step's few float32 rows against a plain weight on a CPU take the native kernel that reads
    the weight at memory bandwidth (kernels/linear_ops.cpp), where it was built; longer steps
    take MKL, or oneDNN where the kernel is the AVX2 build (kernels.plain_onednn)."""
    if w.is_mkldnn:
        return onednn_linear(x, w)
    if x.dim() == 2 and x.dtype == w.dtype == torch.float32 and x.device.type == "cpu" \
            and w.is_contiguous() and not (x.requires_grad or w.requires_grad):  # no autograd
        kernel = skinny_linear()
        if kernel is not None and x.shape[0] <= SKINNY_ROWS:
            return kernel(x.contiguous(), w)
        if plain_onednn():  # AVX2-only CPUs, where MKL is the slower path for long steps
            return onednn_linear(x, w)
    return F.linear(x, w)


def onednn_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T through oneDNN, for `w` packed by `pack_weight` or plain (out, in)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def pack_weight(w: torch.Tensor) -> torch.Tensor:
    """A (out, in) weight in oneDNN's blocked layout for CPU matmuls (tuned for 32 rows).
    Measured on 2 AMD EPYC cores, fp32, SmolLM2's 30 decoder layers streamed from memory:
    1 row 36 -> 24 ms, 8 rows 53 -> 31 ms, 128 rows 212 -> 159 ms against F.linear (MKL);
    its 49152-row logits matrix at 8 rows 21 -> 7 ms. Packed for 4 rows instead, 1 row was
    slower than the plain layout (an earlier measurement)."""
    return torch.ops.mkldnn._reorder_linear_weight(w, 32)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        self.q_proj = _linear(cfg.hidden_size, self.n_heads * self.head_dim)
        self.k_proj = _linear(cfg.hidden_size, self.n_kv * self.head_dim)
        self.v_proj = _linear(cfg.hidden_size, self.n_kv * self.head_dim)
        self.o_proj = _linear(self.n_heads * self.head_dim, cfg.hidden_size)
        self.qkv_weight: torch.Tensor | None = None  # set by fuse_()

    def fuse_(self, pack: bool = False) -> None:
        """One matmul for q, k and v (same math, fewer calls); drops the separate weights.
        `pack`: weights in oneDNN's layout (CPU; see pack_weight)."""
        self.qkv_weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        del self.q_proj, self.k_proj, self.v_proj
        self.o_weight = self.o_proj.weight.detach()  # a plain attribute, not a Parameter
        del self.o_proj
        if pack:
            self.qkv_weight, self.o_weight = map(pack_weight, (self.qkv_weight, self.o_weight))

    def forward(self, x, cos, sin, pool: KVPool, layer: int, batch: AttnBatch,
                lora: LoraSegments | None) -> torch.Tensor:
        T, D = x.shape[0], self.head_dim
        q_dim, kv_dim = self.n_heads * D, self.n_kv * D
        if self.qkv_weight is not None:
            qkv = linear(x, self.qkv_weight)  # (T, q_dim + 2 kv_dim)
            if lora is not None:  # q, k and v's deltas in one
                lora.add_delta(qkv, x, layer, QKV, (q_dim, kv_dim, kv_dim))
            q, k, v = qkv.split([q_dim, kv_dim, kv_dim], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
            if lora is not None:
                q, k, v = (lora.add_delta(t, x, layer, (m,)) for t, m in zip((q, k, v), QKV,
                                                                            strict=True))
        if self.qkv_weight is not None:
            ops.rope_qk_(qkv, cos, sin, self.n_heads, self.n_kv)  # q and k rotated in place
            q, k = q.view(T, self.n_heads, D), k.view(T, self.n_kv, D)
        else:
            q = apply_rope(q.view(T, self.n_heads, D), cos, sin)  # (T, H, D)
            k = apply_rope(k.view(T, self.n_kv, D), cos, sin)  # (T, H_kv, D)
        out = paged_attention(q, k, v.view(T, self.n_kv, D), pool, layer, batch)
        out = out.reshape(T, self.n_heads * self.head_dim)
        y = self.o_proj(out) if self.qkv_weight is None else linear(out, self.o_weight)
        return y if lora is None else lora.add_delta(y, out, layer, ("self_attn.o_proj",))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = _linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = _linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = _linear(cfg.intermediate_size, cfg.hidden_size)
        self.gate_up_weight: torch.Tensor | None = None  # set by fuse_()

    def fuse_(self, pack: bool = False) -> None:
        self.gate_up_weight = torch.cat([self.gate_proj.weight, self.up_proj.weight])
        del self.gate_proj, self.up_proj
        self.down_weight = self.down_proj.weight.detach()
        del self.down_proj
        if pack:
            self.gate_up_weight, self.down_weight = map(pack_weight, (self.gate_up_weight,
                                                                      self.down_weight))

    def forward(self, x: torch.Tensor, layer: int, lora: LoraSegments | None) -> torch.Tensor:
        if self.gate_up_weight is not None:
            gate_up = linear(x, self.gate_up_weight)  # (T, 2 I)
            if lora is not None:  # gate and up's deltas in one
                half = gate_up.shape[1] // 2
                lora.add_delta(gate_up, x, layer, GATE_UP, (half, half))
        else:
            g, u = self.gate_proj(x), self.up_proj(x)
            if lora is not None:
                g, u = (lora.add_delta(t, x, layer, (m,)) for t, m in zip((g, u), GATE_UP,
                                                                         strict=True))
        h = ops.silu_mul(gate_up) if self.gate_up_weight is not None else F.silu(g) * u
        y = self.down_proj(h) if self.gate_up_weight is None else linear(h, self.down_weight)
        return y if lora is None else lora.add_delta(y, h, layer, ("mlp.down_proj",))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h, residual, cos, sin, pool, layer, batch, lora):
        """vLLM's form: `h` is the previous sublayer's output, not yet added to `residual`,
        the stream (None at a block's first layer, where `h` is the stream itself). Each
        norm adds its input to the stream in place first (one fused pass). Returns the pair
        after this layer; the block adds the last `h` to the stream."""
        if residual is None:
            residual = h.clone()  # the stream is ours to update; the caller's input stays
            h = self.input_layernorm(residual)
        else:
            h = self.input_layernorm.add_(residual, h)
        h = self.self_attn(h, cos, sin, pool, layer, batch, lora)
        h = self.post_attention_layernorm.add_(residual, h)
        return self.mlp(h, layer, lora), residual


class EmbeddingBlock(nn.Module):
    """token ids (T,) -> hidden (T, hidden)."""

    kind = "embed"

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.packed: torch.Tensor | None = None  # the matrix in oneDNN's layout (pack_)

    def pack_(self) -> None:
        """Keep a copy of the matrix in oneDNN's layout for the tied heads that read it (CPU;
        see pack_weight): the lookup needs the plain rows, the logits the packed copy. Costs
        the matrix's bytes twice (counted against the budget: Weights.weight_bytes); measured on 2
        cores, SmolLM2's logits at 8 rows 20.8 -> 7.3 ms."""
        self.packed = pack_weight(self.embed_tokens.weight)

    def logits_weight(self) -> torch.Tensor:
        """The matrix tied heads compute logits with: the packed copy, else the rows."""
        return self.embed_tokens.weight if self.packed is None else self.packed

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)


class DecoderBlock(nn.Module):
    """A run of decoder layers: hidden (T, hidden) -> hidden (T, hidden), through its KV pool."""

    kind = "decoder"

    def __init__(self, cfg: LlamaConfig, n_layers: int):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(n_layers))
        self.fused_weights: tuple[list[torch.Tensor], ...] | None = None  # set by fuse_()
        self.register_buffer("inv_freq", inv_frequencies(cfg), persistent=False)

    def fuse_(self, pack: bool = False) -> DecoderBlock:
        """Fuse q/k/v and gate/up weights for inference; state_dict names no longer apply.
        `pack`: in oneDNN's layout too (CPU, fp32/bf16)."""
        for layer in self.layers:
            layer.self_attn.fuse_(pack)
            layer.mlp.fuse_(pack)
        self.fused_weights = fused_decode.weight_lists(self)  # for one-call decode steps
        return self

    def forward(self, x: torch.Tensor, pool: KVPool, batch: AttnBatch,
                lora: LoraSegments | None = None) -> torch.Tensor:
        cfg = self.cfg
        cos, sin = batch.rope(self.inv_freq, x.dtype,
                              (cfg.rope_theta, cfg.rope_scaling, cfg.head_dim))
        fused = fused_decode.decode_step(self, x, cos, sin, pool, batch, lora, SKINNY_ROWS)
        if fused is not None:  # a decode-only step on a CPU: every layer in one native call
            return fused
        h, residual = x, None
        for j, layer in enumerate(self.layers):
            h, residual = layer(h, residual, cos, sin, pool, j, batch, lora)
        return residual.add_(h)


class HeadBlock(nn.Module):
    """hidden (N, hidden) -> logits (N, vocab). Tied models borrow the embedding matrix."""

    kind = "head"

    def __init__(self, cfg: LlamaConfig, tied_embedding: torch.Tensor | None = None):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.packed: torch.Tensor | None = None  # an untied matrix in oneDNN's layout (pack_)
        if cfg.tie_word_embeddings:
            if tied_embedding is None:
                raise ValueError("a tied head needs the embedding block's weight")
            self.lm_head = None
            self.register_buffer("tied_weight", tied_embedding, persistent=False)
        else:
            self.lm_head = _linear(cfg.hidden_size, cfg.vocab_size)

    def pack_(self) -> None:
        """An untied head's matrix in oneDNN's layout (CPU; see pack_weight). A tied head
        multiplies by its embedding block's packed copy instead (EmbeddingBlock.pack_)."""
        if self.lm_head is not None:
            self.packed = pack_weight(self.lm_head.weight)
            self.lm_head = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if self.lm_head is not None:
            return self.lm_head(h)
        return linear(h, self.packed if self.packed is not None else self.tied_weight)


class StitchBlock(nn.Module):
    """A fitted affine map between two models' residual streams: (T, h_in) -> (T, h_out)."""

    kind = "stitch"

    def __init__(self, h_in: int, h_out: int):
        super().__init__()
        self.proj = nn.Linear(h_in, h_out, bias=True)
        self.proj.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
