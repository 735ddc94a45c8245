"""Experiment 1: p95 latency and utilization vs request rate: blockllm vs vLLM (one server per
model, and multi-LoRA where variants are adapters) vs per-model serving on our engine vs
transformers generate() (static batching).

Same trace (per rate), same memory and KV budgets, servers started on localhost by the harness.
Two weight budgets: the paper's setting, where the variants do not all fit whole (per-model
serving must swap models; blockllm's shared blocks fit), and one where every system holds every
model at once (`ample_budget`): what is left of the comparison when memory is not the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.configs._serving import VLLM, Point, budgets, run_points
from experiments.workloads import WorkloadConfig

SYSTEMS = ("blockllm", *VLLM, "per_model", "hf_generate")


@dataclass(frozen=True)
class Scale:
    n_requests: int  # per rate point
    rates: tuple[float, ...]  # requests per second
    max_tokens: tuple[int, int]  # output length range
    memory_budget: str  # weight budget, same for every system
    kv_budget: str
    ample_budget: str | None = None  # a budget that holds every model whole (None: skip)


SCALES = {
    "toy": Scale(6, (2.0, 8.0), (4, 6), "64MiB", "16MiB"),
    "cpu-small": Scale(24, (0.5, 1.0, 2.0), (8, 16), "1.5GiB", "256MiB", "4GiB"),
    "gpu-full": Scale(256, (1.0, 2.0, 4.0, 8.0, 16.0), (32, 128), "40GiB", "16GiB"),
}


def points(scale: str) -> list[Point]:
    s = SCALES[scale]
    regimes = [("", s.memory_budget, SYSTEMS)]
    if s.ample_budget:  # the peers and us, every model resident
        regimes.append(("-all", s.ample_budget, ("blockllm", *VLLM)))
    return [Point(f"r{rate:g}{suffix}", {"rate": rate, "budget": budget},
                  WorkloadConfig(n_requests=s.n_requests, rate=rate, max_tokens=s.max_tokens,
                                 popularity="uniform", seed=1),
                  systems, budgets(budget, s.kv_budget))
            for suffix, budget, systems in regimes for rate in s.rates]


def run(scale: str, out: Path, zoo: str | None, models: list[str]) -> list[Path]:
    return run_points("latency_vs_rate", scale, points(scale), out, zoo, models)
