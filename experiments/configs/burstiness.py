"""Experiment 6: burstiness. Gamma arrivals at one mean rate, the coefficient of variation of
inter-arrival times swept (CV 1 is Poisson; larger is burstier); blockllm vs per-model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.configs._serving import Point, budgets, run_points
from experiments.workloads import WorkloadConfig


@dataclass(frozen=True)
class Scale:
    n_requests: int
    rate: float
    cvs: tuple[float, ...]
    max_tokens: tuple[int, int]
    memory_budget: str
    kv_budget: str


SCALES = {
    "toy": Scale(6, 4.0, (1.0, 4.0), (4, 6), "64MiB", "16MiB"),
    "cpu-small": Scale(24, 1.0, (1.0, 2.0, 4.0), (8, 16), "1.5GiB", "256MiB"),
    "gpu-full": Scale(256, 8.0, (1.0, 2.0, 4.0, 8.0), (32, 128), "40GiB", "16GiB"),
}


def run(scale: str, out: Path, zoo: str | None, models: list[str]) -> list[Path]:
    s = SCALES[scale]
    pts = [Point(f"cv{cv:g}", {"rate": s.rate, "cv": cv},
                 WorkloadConfig(n_requests=s.n_requests, rate=s.rate, arrival="gamma", cv=cv,
                                max_tokens=s.max_tokens, popularity="uniform", seed=2),
                 ("blockllm", "vllm_per_model", "per_model"), budgets(s.memory_budget, s.kv_budget))
           for cv in s.cvs]
    return run_points("burstiness", scale, pts, out, zoo, models)
