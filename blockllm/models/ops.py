"""A decoder layer's elementwise work: the native fused kernels on a CPU (blockllm.kernels),
the Triton ones on a GPU (blockllm.kernels.triton_ops), the same arithmetic in torch ops
elsewhere (no compiler, no Triton; the `torch_*` functions, also the kernels' reference).
Inference only: the kernels have no autograd (variants are trained with transformers).

Shapes: x, residual (T, hidden); gate_up (T, 2 * intermediate); qkv (T, (H + 2 H_kv) * D),
the fused q/k/v projection; cos, sin (T, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blockllm.kernels import native
from blockllm.models.gpu_kernels import gpu_kernels


def _ops(x: torch.Tensor):
    """The kernels for `x` (a 2-D tensor whose rows are contiguous): native on a CPU (the
    whole tensor contiguous), Triton on a GPU; None: the torch path."""
    if x.dim() != 2 or x.stride(-1) != 1:
        return None
    if x.device.type == "cpu":
        return native() if x.is_contiguous() else None
    return gpu_kernels(x.dtype) if x.device.type == "cuda" else None


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x * rsqrt(mean(x^2) + eps)), computed in float32, cast back (transformers)."""
    ops = _ops(x)
    return ops.rms_norm(x, weight, eps) if ops is not None else torch_rms_norm(x, weight, eps)


def add_rms_norm_(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                  eps: float) -> torch.Tensor:
    """residual += x in place (the residual stream); returns rms_norm(residual)."""
    ops = _ops(residual)
    if ops is not None and x.is_contiguous():
        return ops.add_rms_norm_(residual, x, weight, eps)
    residual += x
    return rms_norm(residual, weight, eps)


def torch_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    g, u = gate_up.chunk(2, dim=-1)
    return F.silu(g) * u


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, for gate_up = [gate | up] along the last axis."""
    ops = _ops(gate_up)
    return ops.silu_mul(gate_up) if ops is not None else torch_silu_mul(gate_up)


def torch_rope_qk_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int,
                   n_kv_heads: int) -> torch.Tensor:
    from blockllm.models.rope import apply_rope
    T, D = qkv.shape[0], cos.shape[-1]
    qk = qkv[:, :(n_heads + n_kv_heads) * D].view(T, n_heads + n_kv_heads, D)
    qk.copy_(apply_rope(qk, cos, sin))
    return qkv


def rope_qk_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int,
             n_kv_heads: int) -> torch.Tensor:
    """Rotate the q and k heads of `qkv` in place (rotate-half RoPE); v is left alone."""
    ops = _ops(qkv)
    if ops is not None and cos.is_contiguous() and sin.is_contiguous():
        return ops.rope_qk_(qkv, cos, sin, n_heads, n_kv_heads)
    return torch_rope_qk_(qkv, cos, sin, n_heads, n_kv_heads)
