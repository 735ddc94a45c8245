"""A decoder layer's elementwise work: the native fused kernels on a CPU (blockllm.kernels),
the same arithmetic in torch ops elsewhere (a GPU, or no compiler). Inference only: the native
ops have no autograd (variants are trained with transformers).

Shapes: x, residual (T, hidden); gate_up (T, 2 * intermediate); qkv (T, (H + 2 H_kv) * D),
the fused q/k/v projection; cos, sin (T, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blockllm.kernels import native


def _ops(x: torch.Tensor):
    """The native ops where they apply to `x` (a contiguous 2-D CPU tensor), else None."""
    if x.device.type != "cpu" or x.dim() != 2 or not x.is_contiguous():
        return None
    return native()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x * rsqrt(mean(x^2) + eps)), computed in float32, cast back (transformers)."""
    ops = _ops(x)
    if ops is not None:
        return ops.rms_norm(x, weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm_(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                  eps: float) -> torch.Tensor:
    """residual += x in place (the residual stream); returns rms_norm(residual)."""
    ops = _ops(residual)
    if ops is not None and x.is_contiguous():
        return ops.add_rms_norm_(residual, x, weight, eps)
    residual += x
    return rms_norm(residual, weight, eps)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, for gate_up = [gate | up] along the last axis."""
    ops = _ops(gate_up)
    if ops is not None:
        return ops.silu_mul(gate_up)
    g, u = gate_up.chunk(2, dim=-1)
    return F.silu(g) * u


def rope_qk_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int,
             n_kv_heads: int) -> torch.Tensor:
    """Rotate the q and k heads of `qkv` in place (rotate-half RoPE); v is left alone."""
    ops = _ops(qkv)
    if ops is not None and cos.is_contiguous() and sin.is_contiguous():
        return ops.rope_qk_(qkv, cos, sin, n_heads, n_kv_heads)
    from blockllm.models.rope import apply_rope
    T, D = qkv.shape[0], cos.shape[-1]
    qk = qkv[:, :(n_heads + n_kv_heads) * D].view(T, n_heads + n_kv_heads, D)
    qk.copy_(apply_rope(qk, cos, sin))
    return qkv
