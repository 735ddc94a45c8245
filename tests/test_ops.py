"""The fused layer ops (native CPU kernels) against their torch path, float32 and bfloat16."""

import pytest
import torch

from blockllm.kernels import native
from blockllm.models import ops
from blockllm.models.rope import apply_rope, cos_sin

pytestmark = pytest.mark.skipif(native() is None, reason="native kernels not built here")

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def _torch_path(monkeypatch):
    monkeypatch.setattr(ops, "native", lambda: None)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)


@DTYPES
def test_norms_and_silu_match_the_torch_path(dtype, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(7, 96, generator=g).to(dtype) for _ in range(2))
    w = torch.rand(96, generator=g).to(dtype) + 0.5
    gu = torch.randn(5, 2 * 80, generator=g).to(dtype)
    r_native = r.clone()
    got = (ops.rms_norm(x, w, 1e-6), ops.add_rms_norm_(r_native, x, w, 1e-6), ops.silu_mul(gu))
    _torch_path(monkeypatch)
    r_torch = r.clone()
    want = (ops.rms_norm(x, w, 1e-6), ops.add_rms_norm_(r_torch, x, w, 1e-6), ops.silu_mul(gu))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **_tol(dtype))
    torch.testing.assert_close(r_native, r_torch, **_tol(dtype))
    torch.testing.assert_close(r_torch, r + x)  # the residual stream took the sum, in place


@DTYPES
def test_rope_rotates_q_and_k_in_place_and_leaves_v(dtype, monkeypatch):
    H, Hkv, D, T = 6, 2, 32, 5
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(T, (H + 2 * Hkv) * D, generator=g).to(dtype)
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    cos, sin = cos_sin(inv, torch.tensor([0, 3, 4, 9, 100]), dtype)
    got = ops.rope_qk_(qkv.clone(), cos, sin, H, Hkv)
    q = apply_rope(qkv[:, :H * D].view(T, H, D), cos, sin).reshape(T, -1)
    k = apply_rope(qkv[:, H * D:(H + Hkv) * D].view(T, Hkv, D), cos, sin).reshape(T, -1)
    torch.testing.assert_close(got, torch.cat([q, k, qkv[:, (H + Hkv) * D:]], 1), **_tol(dtype))
    _torch_path(monkeypatch)
    torch.testing.assert_close(ops.rope_qk_(qkv.clone(), cos, sin, H, Hkv), got, **_tol(dtype))
