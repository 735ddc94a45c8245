"""Native CPU kernels, compiled on first use with this machine's C++ compiler (torch's
cpp_extension, cached in its extensions folder, $TORCH_EXTENSIONS_DIR or
~/.cache/torch_extensions) and registered as torch ops in the `blockllm` namespace:

* paged_attention.cpp: decode attention over a paged KV pool read in place;
* layer_ops.cpp: a decoder layer's elementwise work fused (RMSNorm, residual add + RMSNorm,
  SiLU-and-mul, RoPE of q and k in place), as vLLM's CPU custom ops do;
* lora_ops.cpp: the LoRA deltas of a batch mixing adapters, one op per fused matmul;
* linear_ops.cpp: the matmul of a decode step's few rows, at memory bandwidth.

Where they cannot be built (no compiler) or are switched off (BLOCKLLM_NATIVE=0), `native()`
is None and the model code takes its torch path (models.ops, models.attention).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(f) for f in ("paged_attention.cpp", "layer_ops.cpp",
                                                  "lora_ops.cpp", "linear_ops.cpp",
                                                  "decode_layers.cpp")]


def _cpu_id() -> str:
    """What -march=native compiles for: a build made on one CPU is not loaded on another."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return hashlib.sha256((flags + torch.__version__).encode()).hexdigest()[:10]


def _ninja_on_path() -> None:
    """cpp_extension runs `ninja` from PATH; the PyPI package's binary sits in the venv's bin,
    which is not on PATH when the venv's python is run without activating it."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path


@functools.cache
def native():
    """The `torch.ops.blockllm` namespace (shapes in the .cpp files), or None where the
    kernels are not available."""
    if os.environ.get("BLOCKLLM_NATIVE", "1") == "0":
        return None
    from torch.utils import cpp_extension
    _ninja_on_path()
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:10]
    name = f"blockllm_kernels_{digest}_{_cpu_id()}"  # sources and CPU: a build is never stale
    build = Path(cpp_extension._get_build_directory(name, verbose=False))
    if _load_built(build / f"{name}.so"):
        return torch.ops.blockllm
    _clear_stale_lock(build / "lock")
    try:
        cpp_extension.load(
            name, [str(p) for p in SOURCES], is_python_module=False, verbose=False,
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffast-math"],
            extra_ldflags=["-fopenmp"])
    except Exception as e:  # noqa: BLE001 - no compiler, or a failed build: the torch path
        log.warning("native kernels unavailable (%s); using the torch path",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    return torch.ops.blockllm


def _load_built(so: Path) -> bool:
    """Load a library built before, without cpp_extension: its `load` takes a lock file in
    the build folder in every process, even when nothing needs building, and a process
    killed while holding it (a server stopped during start-up) left every later process
    waiting for it forever."""
    if not so.exists():
        return False
    try:
        torch.ops.load_library(str(so))
    except OSError:  # a build cut short: build it again
        return False
    return True


def _clear_stale_lock(lock: Path, stale_s: float = 600) -> None:
    """Remove a build lock older than any build takes (about 2 minutes on 2 cores): its
    holder died (cpp_extension waits for a lock without a timeout)."""
    try:
        if time.time() - lock.stat().st_mtime > stale_s:
            lock.unlink()
            log.warning("removed a stale kernel build lock %s", lock)
    except FileNotFoundError:
        pass


def paged_decode() -> Callable | None:
    """torch.ops.blockllm.paged_decode(q, k_cache, v_cache, page_tables, context_lens, scale),
    or None where the kernels are not available."""
    ops = native()
    return None if ops is None else ops.paged_decode


# rows up to which skinny_linear beats MKL and oneDNN on plain weights (benchmarks.matmul_layout,
# 2 Xeon cores: 12-24% faster than MKL at 24-32 rows, tied at 48, slower at 64; 2 EPYC cores:
# 14-30% faster than oneDNN on plain weights at 24-32 rows)
SKINNY_ROWS = 32
SKINNY_ISAS = ("avx512", "avx2")  # builds of linear_ops.cpp measured to beat BLAS / oneDNN


@functools.cache
def skinny_linear() -> Callable | None:
    """torch.ops.blockllm.skinny_linear(x, w) -> x @ w.T for float32 x of at most 64 rows and a
    plain (out, in) w, or None where the kernels are not available or were built without
    AVX-512 or AVX2 (their generic loop is not known to beat BLAS: linear_ops.cpp)."""
    ops = native()
    return ops.skinny_linear if ops is not None and ops.skinny_linear_isa() in SKINNY_ISAS \
        else None


@functools.cache
def plain_onednn() -> bool:
    """Whether a float32 step longer than SKINNY_ROWS against a plain weight goes to oneDNN
    (mkldnn linear on the plain layout) instead of F.linear's MKL sgemm: where the skinny
    kernel is the AVX2 build. Measured on 2 AMD EPYC (Zen 3) cores, SmolLM2's 30 layers: 64
    rows 158 -> 134 ms, 128 rows 256 -> 216 ms (oneDNN's packed layout: 114 and 195 ms, but
    packed weights would cost the decode rows the kernel). AVX-512 Xeons keep MKL, which tied
    the packed layout at 128 rows there."""
    ops = native()
    return ops is not None and torch.backends.mkldnn.is_available() \
        and ops.skinny_linear_isa() == "avx2"


@functools.cache
def decode_layers() -> Callable | None:
    """torch.ops.blockllm.decode_layers: a float32 decode step through every layer of a
    decoder block in one call (kernels/decode_layers.cpp), where the skinny kernel it uses is
    built; None elsewhere (the Python path)."""
    return None if skinny_linear() is None else native().decode_layers
