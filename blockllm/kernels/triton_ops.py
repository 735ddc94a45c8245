"""GPU kernels in Triton: a decoder layer's elementwise work fused, and decode attention that
reads the paged KV pool in place (no gather into dense tensors, no mask tensor).

On an H200 a Llama-2-7B decode step in torch ops launched about 45 kernels per layer, most
of them elementwise ones of a few microseconds each: inside a CUDA graph they, not the
weights' bytes, set the step's time (results/gpu). Fused, a layer launches about 11. The
arithmetic follows the torch path (models/ops.py, models/attention.py) operation for
operation: RMSNorm in float32 cast back before the weight, SiLU in float32, RoPE rounded
after each product as torch rounds it, attention accumulated in float32.

Loaded by `blockllm.models.gpu_kernels.gpu_kernels()` on a GPU where Triton is installed (the
torch path otherwise); tests run the same kernels on the CPU in Triton's interpreter
(TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm(res_ptr, x_ptr, w_ptr, out_ptr, n_cols, eps, stride_r, stride_x, stride_o,
                  HAS_X: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    r = tl.load(res_ptr + row * stride_r + cols, mask=m, other=0.0)
    if HAS_X:  # the residual stream += the sublayer's output, in place
        r = r + tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0)
        tl.store(res_ptr + row * stride_r + cols, r, mask=m)
    h = r.to(tl.float32)
    h = h * tl.rsqrt(tl.sum(h * h, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=m, other=0.0)
    tl.store(out_ptr + row * stride_o + cols, w * h.to(r.dtype), mask=m)


def _norm(residual: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor,
          eps: float) -> torch.Tensor:
    T, n = residual.shape
    out = torch.empty_like(residual)
    block, warps = norm_launch(n)
    _add_rms_norm[(T,)](residual, residual if x is None else x, weight, out, n, eps,
                        residual.stride(0), (residual if x is None else x).stride(0),
                        out.stride(0), HAS_X=x is not None, BLOCK=block, num_warps=warps)
    return out


def norm_launch(n: int) -> tuple[int, int]:
    """(BLOCK, num_warps) of the norm kernel for rows of n values."""
    block = triton.next_power_of_2(n)
    return block, min(16, max(1, block // 256))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _norm(x, None, weight, eps)


def add_rms_norm_(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                  eps: float) -> torch.Tensor:
    return _norm(residual, x, weight, eps)


@triton.jit
def _silu_mul(gu_ptr, out_ptr, n_cols, stride_gu, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < n_cols
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=m, other=0.0)
    u = tl.load(gu_ptr + row * stride_gu + n_cols + cols, mask=m, other=0.0)
    gf = g.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (gf / (1.0 + tl.exp(-gf))).to(g.dtype) * u,
             mask=m)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    T, n2 = gate_up.shape
    n = n2 // 2
    out = torch.empty((T, n), dtype=gate_up.dtype, device=gate_up.device)
    block = min(1024, triton.next_power_of_2(n))
    _silu_mul[(T, triton.cdiv(n, block))](gate_up, out, n, gate_up.stride(0), out.stride(0),
                                          BLOCK=block)
    return out


@triton.jit
def _rope(qkv_ptr, cos_ptr, sin_ptr, stride_t, stride_c, HALF: tl.constexpr,
          BLOCK: tl.constexpr):
    t, h = tl.program_id(0), tl.program_id(1)
    i = tl.arange(0, BLOCK)
    m = i < HALF
    base = qkv_ptr + t * stride_t + h * 2 * HALF
    x1 = tl.load(base + i, mask=m, other=0.0)
    x2 = tl.load(base + HALF + i, mask=m, other=0.0)
    c1 = tl.load(cos_ptr + t * stride_c + i, mask=m, other=0.0)
    c2 = tl.load(cos_ptr + t * stride_c + HALF + i, mask=m, other=0.0)
    s1 = tl.load(sin_ptr + t * stride_c + i, mask=m, other=0.0)
    s2 = tl.load(sin_ptr + t * stride_c + HALF + i, mask=m, other=0.0)
    dt = x1.dtype  # x * cos + rotate_half(x) * sin, each product rounded as torch does
    tl.store(base + i, (x1 * c1).to(dt) + (-x2 * s1).to(dt), mask=m)
    tl.store(base + HALF + i, (x2 * c2).to(dt) + (x1 * s2).to(dt), mask=m)


def rope_qk_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int,
             n_kv_heads: int) -> torch.Tensor:
    T, D = qkv.shape[0], cos.shape[-1]
    _rope[(T, n_heads + n_kv_heads)](qkv, cos, sin, qkv.stride(0), cos.stride(0),
                                     HALF=D // 2, BLOCK=triton.next_power_of_2(D // 2))
    return qkv


_TILE = 4096


@triton.jit
def _paged_decode(q_ptr, k_ptr, v_ptr, tab_ptr, len_ptr, o_ptr, scale, n_tab,
                  stride_qb, stride_qh, stride_kp, stride_kt, stride_kh, stride_tb, stride_ob,
                  stride_oh, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                  PS: tl.constexpr, BT: tl.constexpr):
    """One (sequence, KV head): its G query heads over the sequence's pages, BT tokens of a
    page at a time (the (GP, BT, BD) product stays a few thousand values whatever the GQA
    group and page size, so it stays in registers), with an online softmax in float32; the
    length is read from memory (a CUDA graph replays it for any lengths)."""
    b, kvh = tl.program_id(0), tl.program_id(1)
    g, d, t = tl.arange(0, GP), tl.arange(0, BD), tl.arange(0, BT)
    gm, dm = g < G, d < D
    q_off = b * stride_qb + (kvh * G + g)[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_off, mask=gm[:, None] & dm[None, :], other=0.0).to(tl.float32)
    length = tl.load(len_ptr + b)
    m_i = tl.full((GP,), float("-inf"), tl.float32)
    l_i = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, BD), tl.float32)
    for p in range(0, tl.cdiv(length, PS)):
        page = tl.load(tab_ptr + b * stride_tb + p, mask=p < n_tab, other=0)
        for t0 in range(0, PS, BT):  # (a tile past the length is masked out: alpha 1, pr 0)
            tok = t0 + t
            tm = (tok < PS) & (p * PS + tok < length)
            kv_off = page * stride_kp + tok[:, None] * stride_kt + kvh * stride_kh + d[None, :]
            kv_m = tm[:, None] & dm[None, :]
            k = tl.load(k_ptr + kv_off, mask=kv_m, other=0.0).to(tl.float32)  # (BT, BD)
            s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # (GP, BT)
            s = tl.where(tm[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp(m_i - m_new)
            pr = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(pr, axis=1)
            v = tl.load(v_ptr + kv_off, mask=kv_m, other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + tl.sum(pr[:, :, None] * v[None, :, :], axis=1)
            m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # (no KV at all: zeros)
    o_off = b * stride_ob + (kvh * G + g)[:, None] * stride_oh + d[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=gm[:, None] & dm[None, :])


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 tables: torch.Tensor, lens: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B, H, D), rows of stride 1 along D; k_cache, v_cache (pages, page_size, H_kv, D)
    contiguous; tables (B, P) page ids; lens (B,) tokens of KV per sequence (0 gives zeros).
    Returns (B, H, D), the same call as the native CPU kernel's."""
    B, H, D = q.shape
    assert q.stride(2) == 1 and tables.stride(1) == 1 and k_cache.stride(3) == 1 and \
        k_cache.stride() == v_cache.stride(), "paged_decode: unexpected layout"
    ps, hkv = k_cache.shape[1], k_cache.shape[2]
    g = H // hkv
    gp, bd, bt = decode_tiles(g, D, ps)
    out = torch.empty((B, H, D), dtype=q.dtype, device=q.device)
    _paged_decode[(B, hkv)](q, k_cache, v_cache, tables, lens, out, scale, tables.shape[1],
                            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
                            k_cache.stride(2), tables.stride(0), out.stride(0), out.stride(1),
                            G=g, GP=gp, D=D, BD=bd, PS=ps, BT=bt)
    return out


def decode_tiles(g: int, d: int, ps: int) -> tuple[int, int, int]:
    """(GP, BD, BT) of paged_decode for GQA group g, head dim d, pages of ps tokens. Tokens
    per tile: a (gp, bt, bd) product of at most _TILE values, as a page of 16 at GQA 1 and D
    128 (Llama-2-7B), which compiles for sm_90 without spills (tests/test_triton_compile.py);
    a whole page at GQA 8 or a page of 128 tokens took 255 registers. Any page size: tokens
    past it are masked."""
    gp, bd = max(2, triton.next_power_of_2(g)), triton.next_power_of_2(d)
    return gp, bd, min(triton.next_power_of_2(ps), max(2, _TILE // (gp * bd)))
