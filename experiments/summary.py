"""Summaries of results files with pandas: latency percentiles, throughput, utilization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def load(path: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    header, reqs, samples = {}, [], []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if "header" in d:
            header = d["header"]
        elif "request" in d:
            reqs.append(d["request"])
        else:
            samples = d["samples"]
    return header, pd.DataFrame(reqs), pd.DataFrame(samples)


def summarize(path: Path) -> dict:
    h, df, s = load(path)
    ok = df[df["status"] == "ok"]
    keys = ("experiment", "scale", "rate", "cv", "n_models", "budget")
    row = {"system": h["system"], **{k: v for k, v in h.items() if k in keys},
           "requests": len(df), "ok": len(ok), "tokens_per_s": ok["tokens"].sum() / h["wall_s"],
           "util_mean": float(s["util"].mean()) if len(s) else None,
           "mem_peak": float(s["mem"].max()) if len(s) else None, "sampler": h["sampler"],
           "preemptions": h.get("preemptions"), "cold_loads": h.get("cold_loads"),
           "server_starts": h.get("server_starts"),
           "server_start_s": h.get("server_start_seconds"),
           "on_demand": (h.get("deployment") or {}).get("on_demand"),
           # requests answered with another token count than the trace asked for: a system
           # that generated less did less work, so its latencies do not compare (headline flags)
           "tokens_off": int((ok["tokens"] != ok["requested"]).sum())
           if "requested" in ok else None}
    for col in ("ttft", "tpot", "e2e"):
        for q in (50, 95, 99):
            row[f"{col}_p{q}"] = float(ok[col].quantile(q / 100)) if len(ok) else None
    row["e2e_p95_lo"], row["e2e_p95_hi"] = quantile_ci(ok["e2e"].to_numpy(), 0.95)
    return row


def quantile_ci(values: np.ndarray, q: float, level: float = 0.95, n_boot: int = 2000,
                seed: int = 0) -> tuple[float | None, float | None]:
    """A bootstrap confidence interval of the q-quantile (percentile method, seeded): with the
    few dozen requests of a cpu-small point, a p95 moves a lot between runs, and two systems
    whose intervals overlap are not told apart by that run."""
    if len(values) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    boot = np.quantile(values[rng.integers(0, len(values), (n_boot, len(values)))], q, axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def table(paths: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([summarize(p) for p in paths])
