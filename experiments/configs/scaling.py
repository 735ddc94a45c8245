"""Experiment 5: scaling in the number of served variants, blockllm vs per-model serving.

A zoo of one base and n_max - 1 synthetic partial fine-tunes (top layers perturbed,
experiments/synthetic.py) is built once under the results folder; each point serves the first n
models under the same weight budget, at the same request rate, requests uniform over the n.
On a GPU the base is a dummy model of a real 7B shape (weights generated, never downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from experiments.configs._serving import Point, budgets, run_points
from experiments.workloads import WorkloadConfig


@dataclass(frozen=True)
class Scale:
    base: str  # model source spec
    dtype: str
    ns: tuple[int, ...]  # numbers of models served
    top_layers: int  # layers each variant changes
    n_requests: int
    rate: float
    max_tokens: tuple[int, int]
    memory_budget: str
    kv_budget: str


SCALES = {
    "toy": Scale("dummy:tiny", "float32", (2, 4), 1, 6, 4.0, (4, 6), "2MiB", "8MiB"),
    "cpu-small": Scale("embedded", "float32", (2, 4, 8), 4, 24, 1.0, (8, 16), "1.5GiB",
                       "256MiB"),
    "gpu-full": Scale("dummy:llama-2-7b", "float16", (2, 4, 8, 16, 32, 64), 1, 256, 4.0,
                      (32, 128), "40GiB", "16GiB"),
}


def build_zoo(scale: str, root: Path) -> tuple[str, list[str]]:
    """The scaling zoo (built once; reused when its models are all there)."""
    import torch

    from blockllm.loaders import load_source
    from blockllm.zoo.ingest import add_source
    from blockllm.zoo.store import Zoo
    from experiments.synthetic import variant
    s = SCALES[scale]
    names = ["base"] + [f"v{i:02d}" for i in range(1, max(s.ns))]
    zoo = Zoo(root)
    missing = [n for n in names if n not in zoo.models()]
    if missing:
        base = load_source(s.base, getattr(torch, s.dtype))
        for name in tqdm(missing, desc=f"scaling zoo[{scale}]"):
            src = base if name == "base" else variant(base, "partial", int(name[1:]),
                                                      s.top_layers)
            add_source(zoo, src, name)
    return str(root), names


def run(scale: str, out: Path, zoo: str | None = None, models=None) -> list[Path]:
    s = SCALES[scale]
    zoo_dir, names = build_zoo(scale, out / "zoos" / f"scaling-{scale}")
    pts = [Point(f"n{n}", {"rate": s.rate, "n_models": n},
                 WorkloadConfig(n_requests=s.n_requests, rate=s.rate, max_tokens=s.max_tokens,
                                popularity="uniform", seed=4),
                 ("blockllm", "vllm_per_model", "per_model"),
                 budgets(s.memory_budget, s.kv_budget) + ("--dtype", s.dtype),
                 tuple(names[:n]), zoo_dir) for n in s.ns]
    return run_points("scaling", scale, pts, out, zoo_dir, names)
