"""Native CPU kernels, compiled on first use with this machine's C++ compiler (torch's
cpp_extension, cached in its extensions folder, $TORCH_EXTENSIONS_DIR or
~/.cache/torch_extensions) and registered as torch ops.

`paged_decode()` is decode attention over a paged KV pool read in place
(paged_attention.cpp). Where it cannot be built (no compiler) or is switched off
(BLOCKLLM_NATIVE=0), `paged_decode()` is None and attention takes the torch path: gather
the pages into dense tensors, then SDPA (models.attention).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("paged_attention.cpp")


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
def paged_decode() -> Callable | None:
    """torch.ops.blockllm.paged_decode(q, k_cache, v_cache, page_tables, context_lens, scale)
    (shapes in paged_attention.cpp), or None where it is not available."""
    if os.environ.get("BLOCKLLM_NATIVE", "1") == "0":
        return None
    from torch.utils import cpp_extension
    _ninja_on_path()
    src = SOURCE.read_text()
    name = f"blockllm_kernels_{hashlib.sha256(src.encode()).hexdigest()[:10]}_{_cpu_id()}"
    try:
        cpp_extension.load_inline(
            name, cpp_sources=[src], is_python_module=False, verbose=False,
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffast-math"],
            extra_ldflags=["-fopenmp"])
    except Exception as e:  # noqa: BLE001 - no compiler, or a failed build: the torch path
        log.warning("native paged attention unavailable (%s); using gather + SDPA",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    return torch.ops.blockllm.paged_decode
