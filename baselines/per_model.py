"""The per-model baseline: today's practice, run on the same engine so the comparison is fair.

Every variant is a whole model: its own copy of every block (no sharing, so no cross-model
batches), its own KV pools, continuous batching among its own requests, and under the memory
budget models are loaded and evicted whole, least recently used. Same kernels, same scheduler,
same KV management as blockllm; only sharing and the residency unit differ.
"""

from __future__ import annotations

from dataclasses import replace

from blockllm.runtime.config import EngineConfig


def per_model_config(cfg: EngineConfig) -> EngineConfig:
    """`cfg` (budgets, device, dtype, batch policy) turned into the per-model baseline."""
    return replace(cfg, share_blocks=False, residency_unit="model", use_equivalence=False)
