"""The GPU kernels (blockllm/kernels/triton_ops.py) against the torch path, run on the CPU in
Triton's interpreter (on a GPU, `blockllm.models.gpu_kernels.gpu_kernels()` runs the same check
at first use and tests/test_engine.py with BLOCKLLM_TEST_DEVICE=cuda checks the engine's tokens).

The interpreter is chosen when Triton is first imported (TRITON_INTERPRET=1), so each check
runs in a process of its own. bfloat16 is checked on a GPU only (`python -m
blockllm.models.gpu_kernels`, experiments/gpu_checks.sh): the interpreter computes it in NumPy,
which has no such type, and returns NaN."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="Triton is installed by make setup on x86-64")

CHECK = """
import torch
import triton.runtime.interpreter as interp

# Triton 3.6's interpreter turns a scalar into a 1-element array, and NumPy >= 2.4 no longer
# converts those to int: a loop bound read from memory fails there (compiled Triton is fine)
_patch = interp._patch_lang_tensor
def _patched(tensor, scope):
    _patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
interp._patch_lang_tensor = _patched
import blockllm.kernels.triton_ops as mod
from blockllm.models.gpu_kernels import check_kernels
{patch}
check_kernels(mod, torch.device("cpu"), torch.{dtype}, tol={tol})
print("ok")
"""


def _check(dtype: str = "float32", tol: float = 1e-5, patch: str = ""):
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, "-c", CHECK.format(dtype=dtype, tol=tol,
                                                               patch=patch)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-3)])
def test_kernels_match_the_torch_path(dtype, tol):
    out = _check(dtype, tol)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_the_check_fails_a_wrong_kernel():
    patch = ("real = mod.paged_decode\n"
             "mod.paged_decode = lambda q, k, v, t, lens, s: real(q, k, v, t, "
             "(lens - 1).clamp(min=1), s)  # one token too few")
    out = _check(patch=patch)
    assert out.returncode != 0 and "paged_decode" in out.stderr, out.stderr[-3000:]
