"""Experiment 1: p95 latency and utilization vs request rate: blockllm vs per-model serving
(and transformers generate(), static batching, at toy scale so far).

Same trace (per rate), same memory and KV budgets, servers started on localhost by the harness.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from experiments.run import run_system
from experiments.workloads import (WorkloadConfig, load_prompts, make_trace, prompt_set,
                                   save_trace)


@dataclass(frozen=True)
class Scale:
    n_requests: int  # per rate point
    rates: tuple[float, ...]  # requests per second
    max_tokens: tuple[int, int]  # output length range
    memory_budget: str  # weight budget, same for every system
    kv_budget: str
    systems: tuple[str, ...] = ("blockllm", "per_model")


SCALES = {
    "toy": Scale(6, (2.0, 8.0), (4, 6), "64MiB", "16MiB",
                 ("blockllm", "per_model", "hf_generate")),
    "cpu-small": Scale(24, (0.5, 1.0, 2.0), (8, 16), "1.5GiB", "256MiB"),
    "gpu-full": Scale(256, (1.0, 2.0, 4.0, 8.0, 16.0), (32, 128), "40GiB", "16GiB"),
}


def run(scale: str, out: Path, zoo: str | None, models: list[str]) -> list[Path]:
    s = SCALES[scale]
    prompts = load_prompts(prompt_set(out / "traces" / "prompts.json"))
    paths = []
    jobs = [(rate, system) for rate in s.rates for system in s.systems]
    for rate, system in tqdm(jobs, desc=f"latency_vs_rate[{scale}]"):
        cfg = WorkloadConfig(n_requests=s.n_requests, rate=rate, max_tokens=s.max_tokens,
                             popularity="uniform", seed=1)
        trace = make_trace(cfg, models, prompts)
        save_trace(trace, out / "traces" / f"latency_vs_rate-{scale}-r{rate:g}.json")
        path = out / f"latency_vs_rate-{scale}-r{rate:g}-{system}.jsonl"
        run_system(system, trace, zoo, ["--memory-budget", s.memory_budget, "--kv-budget",
                                        s.kv_budget], path,
                   {"experiment": "latency_vs_rate", "scale": scale, "rate": rate})
        paths.append(path)
    return paths
