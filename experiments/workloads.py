"""Seeded workload traces: arrivals, model popularity, prompts and output lengths.

A trace is data: generated once from a seed, saved as JSON, replayed against every system, so two
systems see byte-identical requests. Prompts come from a prompt set loaded with `datasets` from a
local JSON file: by default one the project generates from its own tasks and Python's docs
(`prompt_set()`); a ShareGPT-style file (`[{"conversations": [{"from": "human", "value": ...}]}]`)
works too.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class WorkloadConfig:
    n_requests: int = 64  # requests in the trace
    rate: float = 2.0  # mean arrivals per second
    arrival: str = "poisson"  # poisson | gamma | fixed
    cv: float = 1.0  # gamma: coefficient of variation of inter-arrival times (burstiness)
    popularity: str = "uniform"  # uniform | zipf | powerlaw | distinct
    skew: float = 1.1  # zipf exponent / power-law alpha
    max_tokens: tuple[int, int] = (8, 32)  # output lengths, uniform in [lo, hi]
    seed: int = 0  # everything random derives from it


def inter_arrivals(cfg: WorkloadConfig, rng: np.random.Generator) -> np.ndarray:
    n, mean = cfg.n_requests, 1.0 / cfg.rate
    if cfg.arrival == "poisson":
        return rng.exponential(mean, n)
    if cfg.arrival == "gamma":  # shape k = 1/cv^2 keeps the mean and sets the CV
        k = 1.0 / cfg.cv ** 2
        return rng.gamma(k, mean / k, n)
    if cfg.arrival == "fixed":
        return np.full(n, mean)
    raise ValueError(f"unknown arrival process {cfg.arrival!r}")


def popularity(cfg: WorkloadConfig, models: list[str], rng: np.random.Generator) -> list[str]:
    m = len(models)
    if cfg.popularity == "distinct":  # round robin: every model equally, in turn
        return [models[i % m] for i in range(cfg.n_requests)]
    if cfg.popularity == "uniform":
        p = np.full(m, 1.0 / m)
    elif cfg.popularity == "zipf":
        p = 1.0 / np.arange(1, m + 1) ** cfg.skew
    elif cfg.popularity == "powerlaw":
        p = np.arange(1, m + 1, dtype=float) ** -cfg.skew * rng.uniform(0.5, 1.5, m)
    else:
        raise ValueError(f"unknown popularity {cfg.popularity!r}")
    p = p / p.sum()
    return [models[i] for i in rng.choice(m, size=cfg.n_requests, p=p)]


def prompt_set(path: Path, n: int = 200, seed: int = 0) -> Path:
    """Write the project's own prompt set (task prompts + documentation snippets) as JSON."""
    from blockllm.evaluation.tasks import TASKS, perplexity_text
    rng = random.Random(seed)
    text = perplexity_text(60_000, offset=300_000).split("\n\n")
    snippets = [t.strip() for t in text if 40 < len(t.strip()) < 400]
    rows = []
    for i in range(n):
        if i % 2 == 0:
            task = TASKS[sorted(TASKS)[i // 2 % len(TASKS)]]
            rows.append({"prompt": task.examples(1, 10_000 + i)[0][0]})
        else:
            rows.append({"prompt": "Summarize: " + rng.choice(snippets)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=0))
    return path


def load_prompts(path: Path) -> list[str]:
    """Prompts from a local JSON file via `datasets` (our format or ShareGPT-style)."""
    from datasets import load_dataset
    ds = load_dataset("json", data_files=str(path), split="train")
    if "prompt" in ds.column_names:
        return [r["prompt"] for r in ds]
    out = []
    for r in ds:
        turns = [t["value"] for t in r["conversations"] if t.get("from") in ("human", "user")]
        if turns:
            out.append(turns[0])
    return out


def make_trace(cfg: WorkloadConfig, models: list[str], prompts: list[str]) -> dict:
    rng = np.random.default_rng(cfg.seed)
    t = np.cumsum(inter_arrivals(cfg, rng))
    chosen = popularity(cfg, sorted(models), rng)
    idx = rng.integers(0, len(prompts), cfg.n_requests)
    lo, hi = cfg.max_tokens
    outs = rng.integers(lo, hi + 1, cfg.n_requests)
    reqs = [{"i": i, "t": round(float(t[i]), 6), "model": chosen[i], "prompt": prompts[idx[i]],
             "max_tokens": int(outs[i])} for i in range(cfg.n_requests)]
    return {"config": asdict(cfg), "models": sorted(models), "requests": reqs}


def save_trace(trace: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace, sort_keys=True, indent=0))
    return path
