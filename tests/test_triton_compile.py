"""The Triton kernels compile for a Hopper GPU (sm_90) without one: Triton's CUDA backend
lowers each kernel to PTX and its bundled ptxas assembles it, at the shapes the engine
launches them with (SmolLM2 and Llama-2-7B, fp16/bf16/fp32), and no kernel spills registers.
tests/test_triton_ops.py checks what they compute (in Triton's interpreter); this checks that
a GPU would take them, which the interpreter does not."""

import re
import subprocess

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from blockllm.kernels import triton_ops as k  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
# (hidden, intermediate, heads, kv heads, head dim): SmolLM2-135M, Llama-2-7B, a GQA-8 model
SHAPES = {"smollm2": (576, 1536, 9, 3, 64), "llama2-7b": (4096, 11008, 32, 32, 128),
          "gqa8": (4096, 14336, 32, 4, 128)}
DTYPES = ("fp16", "bf16", "fp32")


def _ptxas():
    from triton.backends.nvidia.compiler import get_ptxas
    try:
        return get_ptxas(90).path
    except Exception:  # noqa: BLE001 - a Triton without its bundled ptxas
        return None


pytestmark = pytest.mark.skipif(_ptxas() is None, reason="Triton's ptxas is not installed")


def _launches(dt: str, shape: tuple) -> list[tuple]:
    """(kernel, signature, constexprs, num_warps) as the wrappers in triton_ops launch them."""
    hidden, inter, heads, kv_heads, d = shape
    p, i32 = f"*{dt}", "i32"
    norm_block, norm_warps = k.norm_launch(hidden)
    out = [(k._add_rms_norm, dict(res_ptr=p, x_ptr=p, w_ptr=p, out_ptr=p, n_cols=i32,
                                  eps="fp32", stride_r=i32, stride_x=i32, stride_o=i32,
                                  HAS_X="constexpr", BLOCK="constexpr"),
            dict(HAS_X=has_x, BLOCK=norm_block), norm_warps)
           for has_x in (False, True)]
    out.append((k._silu_mul, dict(gu_ptr=p, out_ptr=p, n_cols=i32, stride_gu=i32, stride_o=i32,
                                  BLOCK="constexpr"),
                dict(BLOCK=min(1024, triton.next_power_of_2(inter))), 4))
    out.append((k._rope, dict(qkv_ptr=p, cos_ptr=p, sin_ptr=p, stride_t=i32, stride_c=i32,
                              HALF="constexpr", BLOCK="constexpr"),
                dict(HALF=d // 2, BLOCK=triton.next_power_of_2(d // 2)), 4))
    g = heads // kv_heads
    for ps in (16, 128):  # the engine's page size, and a large one (tiles of BT tokens)
        gp, bd, bt = k.decode_tiles(g, d, ps)
        sig = dict(q_ptr=p, k_ptr=p, v_ptr=p, tab_ptr="*i64", len_ptr="*i64", o_ptr=p,
                   scale="fp32", n_tab=i32, **{s: i32 for s in (
                       "stride_qb", "stride_qh", "stride_kp", "stride_kt", "stride_kh",
                       "stride_tb", "stride_ob", "stride_oh")},
                   **{c: "constexpr" for c in ("G", "GP", "D", "BD", "PS", "BT")})
        out.append((k._paged_decode, sig, dict(G=g, GP=gp, D=d, BD=bd, PS=ps, BT=bt), 4))
    return out


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_every_kernel_compiles_for_sm90_without_spills(dt, shape, tmp_path):
    for fn, sig, consts, warps in _launches(dt, SHAPES[shape]):
        compiled = triton.compile(ASTSource(fn, sig, consts), target=HOPPER,
                                  options={"num_warps": warps})
        ptx = compiled.asm["ptx"]
        assert ".target sm_90" in ptx and compiled.asm["cubin"], fn.__name__
        (tmp_path / "k.ptx").write_text(ptx)
        report = subprocess.run([_ptxas(), "-v", "--gpu-name", "sm_90a", str(tmp_path / "k.ptx"),
                                 "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
        assert report.returncode == 0, report.stderr
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report.stderr)]
        regs = [int(n) for n in re.findall(r"Used (\d+) registers", report.stderr)]
        assert spills and not any(spills), f"{fn.__name__} {consts}: {report.stderr}"
        assert regs and max(regs) < 255, f"{fn.__name__} {consts}: {max(regs)} registers"
