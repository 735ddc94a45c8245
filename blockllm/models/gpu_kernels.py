"""The Triton kernels (blockllm/kernels/triton_ops.py) for CUDA tensors, each checked against
the torch path the first time a dtype needs it (`gpu_kernels`); the same check runs the
kernels in Triton's interpreter on a CPU (tests/test_triton_ops.py) and, as `python -m
blockllm.models.gpu_kernels`, on a GPU in every dtype with each failure's traceback."""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

# the check's tolerance per dtype (the torch path's own rounding differs by as much)
CHECK_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@functools.cache
def gpu_kernels(dtype: torch.dtype = torch.float32):
    """The Triton kernels for CUDA tensors of `dtype`, or None where Triton is missing,
    switched off (BLOCKLLM_TRITON=0), the dtype is not one they are checked for, or they fail
    the check on this GPU in that dtype (each kernel once, on small and Llama-shaped inputs,
    against the torch path): the torch path then runs."""
    if os.environ.get("BLOCKLLM_TRITON", "1") == "0" or not torch.cuda.is_available() or \
            dtype not in CHECK_TOL:
        return None
    try:
        import blockllm.kernels.triton_ops as mod
        check_kernels(mod, torch.device("cuda", torch.cuda.current_device()), dtype,
                      tol=CHECK_TOL[dtype])
    except Exception:  # noqa: BLE001 - no Triton, or it fails here: the torch path
        log.warning("Triton kernels unavailable in %s; using the torch path", dtype,
                    exc_info=True)
        return None
    return mod


def check_kernels(mod, dev: torch.device, dtype: torch.dtype = torch.float32,
                  seed: int = 0, tol: float = 1e-4) -> None:
    """Raise AssertionError where a kernel of `mod` differs from the torch path: on small
    shapes (GQA, MHA, MQA; odd widths) and on a Llama-2-7B layer's (hidden 4096, intermediate
    11008, 32 heads of 128; several warps and column blocks per row), rows strided as the
    engine passes them (views of wider tensors)."""
    from blockllm.models import ops
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dev, dtype)

    def rows(t: int, n: int):  # (t, n) rows of a wider tensor: stride(0) > n
        return rand(t, n + 16)[:, :n]

    def close(got, want, what):
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol,
                                   msg=lambda m: f"{what} ({dtype}): {m}")
    for hidden, inter in ((96, 80), (4096, 11008)):
        x, r, w = rand(3, hidden), rows(3, hidden), rand(hidden)
        close(mod.rms_norm(x, w, 1e-5), ops.torch_rms_norm(x, w, 1e-5), f"rms_norm {hidden}")
        r2 = r.clone()
        got = mod.add_rms_norm_(r2, x, w, 1e-5)
        close(r2, r + x, f"add_rms_norm_ (stream) {hidden}")
        close(got, ops.torch_rms_norm(r + x, w, 1e-5), f"add_rms_norm_ {hidden}")
        gu = rows(3, 2 * inter)
        close(mod.silu_mul(gu), ops.torch_silu_mul(gu), f"silu_mul {inter}")
    for heads, kv, d in ((4, 2, 16), (32, 8, 128)):
        qkv, cos, sin = rows(3, (heads + 2 * kv) * d), rand(3, d), rand(3, d)
        want = ops.torch_rope_qk_(qkv.clone(), cos, sin, heads, kv)
        close(mod.rope_qk_(qkv, cos, sin, heads, kv), want, f"rope_qk_ {heads}/{kv}/{d}")
    # GQA, MHA, MQA, a Llama-2-7B layer's; pages of several tiles (GQA 8, a page of 64 tokens,
    # one of 24: not a power of two)
    for heads, kv, d, ps in ((4, 2, 16, 4), (3, 3, 8, 16), (4, 1, 32, 8), (32, 32, 128, 16),
                             (16, 2, 128, 64), (2, 2, 128, 24)):
        close(*_decode_pair(mod.paged_decode, rand, heads, kv, d, ps, dev),
              f"paged_decode {heads}/{kv}/{d} page {ps}")


def _decode_pair(kernel, rand, heads: int, kv: int, d: int, ps: int, dev: torch.device):
    """The kernel's output and dense attention's on sequences of 1, 5 and 2 pages + 3 tokens,
    their pages scattered over the pool."""
    import torch.nn.functional as F
    lens = [1, 5 * ps, 2 * ps + 3]
    n_pages = sum(-(-n // ps) for n in lens) + 3
    k_cache, v_cache = rand(n_pages, ps, kv, d), rand(n_pages, ps, kv, d)
    order = torch.randperm(n_pages, generator=torch.Generator().manual_seed(1)).tolist()
    tables, at = [], 0
    for n in lens:
        tables.append(order[at: at + -(-n // ps)])
        at += len(tables[-1])
    width = max(map(len, tables))
    tab = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=dev)
    q = rand(len(lens), (heads + 2 * kv) * d)[:, :heads * d].view(len(lens), heads, d)  # of qkv
    got = kernel(q, k_cache, v_cache, tab, torch.tensor(lens, device=dev), d ** -0.5)
    want = []
    for b, n in enumerate(lens):
        kk = k_cache[tab[b]].reshape(-1, kv, d)[:n].transpose(0, 1)[None].float()
        vv = v_cache[tab[b]].reshape(-1, kv, d)[:n].transpose(0, 1)[None].float()
        want.append(F.scaled_dot_product_attention(q[b][None, :, None].float(), kk, vv,
                                                   enable_gqa=True)[0, :, 0])
    return got, torch.stack(want)


def main() -> None:
    """`python -m blockllm.models.gpu_kernels`: the Triton kernels on this GPU in each dtype,
    printing each failure's traceback (gpu_kernels() logs it and falls back to torch)."""
    import traceback

    import blockllm.kernels.triton_ops as mod
    failed = 0
    for dtype, tol in CHECK_TOL.items():
        try:
            check_kernels(mod, torch.device("cuda"), dtype, tol=tol)
            print(f"triton kernels {dtype}: ok", flush=True)
        except Exception:  # noqa: BLE001 - report every dtype
            failed += 1
            print(f"triton kernels {dtype}: FAILED", flush=True)
            traceback.print_exc()
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
