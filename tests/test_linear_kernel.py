"""The native skinny matmul (kernels/linear_ops.cpp) against float64 matmuls, its errors, and
where the model code uses it."""

import pytest
import torch
import torch.nn.functional as F

from blockllm.kernels import SKINNY_ROWS, native, plain_onednn, skinny_linear
from blockllm.models import llama
from blockllm.models.chain import packable

pytestmark = pytest.mark.skipif(native() is None, reason="native kernels not built here")


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 16, 64])
@pytest.mark.parametrize("out_in", [(960, 576), (8, 16), (7, 19), (13, 1), (4, 40)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_skinny_linear_matches_a_float64_matmul(rows, out_in):
    """Every row count the op takes against shapes with whole and partial 16-column chunks and
    4-row tiles (and both at once)."""
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, out_in[1], generator=g), torch.randn(*out_in, generator=g)
    got = native().skinny_linear(x, w)
    assert got.shape == (rows, out_in[0]) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-4)


def test_skinny_linear_edge_shapes():
    ops = native()
    assert ops.skinny_linear(torch.zeros(0, 8), torch.ones(4, 8)).shape == (0, 4)
    assert ops.skinny_linear(torch.ones(2, 8), torch.ones(0, 8)).shape == (2, 0)
    assert ops.skinny_linear(torch.ones(2, 0), torch.ones(3, 0)).eq(0).all()


@pytest.mark.parametrize("x, w, message", [
    (torch.ones(2, 8, dtype=torch.float64), torch.ones(4, 8), "float32"),
    (torch.ones(2, 8), torch.ones(4, 9), "8 columns"),
    (torch.ones(65, 8), torch.ones(4, 8), "at most 64 rows"),
    (torch.ones(8, 2).T, torch.ones(4, 8), "contiguous"),
], ids=["dtype", "shape", "rows", "strides"])
def test_skinny_linear_says_what_it_does_not_take(x, w, message):
    with pytest.raises(RuntimeError, match=message):
        native().skinny_linear(x, w)


def test_linear_takes_the_kernel_for_decode_rows_only(monkeypatch):
    """models.llama.linear: float32 rows up to SKINNY_ROWS against a plain weight go to the
    kernel (where built with AVX-512 or AVX2); longer steps, other dtypes and packed weights
    do not. Either way the product is x @ w.T."""
    if skinny_linear() is None:
        pytest.skip("skinny_linear not built with AVX-512 or AVX2 here")
    calls = []
    kernel = skinny_linear()
    monkeypatch.setattr(llama, "skinny_linear", lambda: lambda x, w: calls.append(len(x)) or
                        kernel(x, w))
    w = torch.randn(12, 32)
    for rows in (1, SKINNY_ROWS, SKINNY_ROWS + 1):
        x = torch.randn(rows, 32)
        torch.testing.assert_close(llama.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    llama.linear(torch.randn(2, 32, dtype=torch.bfloat16), w.bfloat16())
    llama.linear(torch.randn(2, 32), llama.pack_weight(w))
    llama.linear(torch.randn(2, 32, requires_grad=True), w)  # autograd: F.linear
    x = torch.randn(32, 3).T  # a non-contiguous x is made contiguous for the kernel
    torch.testing.assert_close(llama.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    wt = torch.randn(32, 12).T  # a non-contiguous weight takes F.linear
    torch.testing.assert_close(llama.linear(x, wt), F.linear(x, wt), rtol=1e-5, atol=1e-5)
    assert calls == [1, SKINNY_ROWS, 3]
    assert not packable("cpu", torch.float32)  # float32 weights stay plain for the kernel


@pytest.mark.parametrize("onednn", [False, True], ids=["mkl", "onednn"])
def test_long_steps_take_either_library_with_the_same_product(monkeypatch, onednn):
    """Rows beyond SKINNY_ROWS against a plain float32 weight: MKL (F.linear), or oneDNN on
    the plain layout where the kernel is the AVX2 build (kernels.plain_onednn); both x @ w.T."""
    if onednn and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    monkeypatch.setattr(llama, "plain_onednn", lambda: onednn)
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(SKINNY_ROWS + 9, 40, generator=g), torch.randn(24, 40, generator=g)
    torch.testing.assert_close(llama.linear(x, w).double(), x.double() @ w.double().T,
                               rtol=1e-5, atol=1e-4)
    assert native().skinny_linear_isa() != "avx2" or plain_onednn()
