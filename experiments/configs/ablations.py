"""Experiment 4: ablations. Every mechanism on ("full": shared blocks, per-block batch limits
from profiled latency curves, chain-wide KV coordination, equivalence-assembled chains within
each model's accuracy budget), then one mechanism off at a time, on one trace.

The weight budget sits below the zoo's unique bytes, so what equivalence frees matters, and the
KV budget is tight enough that reservations contend. "speculation" adds speculative block
loads (runtime.speculation), off by default; "chain_waves" the scheduler's wave rule before
stop 29 (earliest chain position first; EngineConfig.wave_order). Placement is ablated in the
simulated cluster experiment (`placement`): this machine is one device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.configs._serving import Point, budgets, run_points
from experiments.workloads import WorkloadConfig

SYSTEMS = ("full", "no_equivalence", "no_sharing", "no_kv_coordination", "fixed_batch",
           "chain_waves", "speculation")


@dataclass(frozen=True)
class Scale:
    n_requests: int
    rate: float
    max_tokens: tuple[int, int]
    memory_budget: str
    kv_budget: str


SCALES = {
    "toy": Scale(6, 4.0, (4, 6), "64MiB", "8MiB"),
    # 64 requests: at 24, the p95's bootstrap interval spanned 0.8-1.7 s, wider than most of
    # the effects measured (headline: ablation_rows)
    "cpu-small": Scale(64, 1.0, (8, 16), "1GiB", "64MiB"),
    "gpu-full": Scale(256, 8.0, (32, 128), "24GiB", "4GiB"),
}


def run(scale: str, out: Path, zoo: str | None, models: list[str]) -> list[Path]:
    s = SCALES[scale]
    point = Point("all", {"rate": s.rate},
                  WorkloadConfig(n_requests=s.n_requests, rate=s.rate, max_tokens=s.max_tokens,
                                 popularity="uniform", seed=3),
                  SYSTEMS, budgets(s.memory_budget, s.kv_budget))
    return run_points("ablations", scale, [point], out, zoo, models)
