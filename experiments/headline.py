"""The headline table (results/headline.md) from results/runs only: blockllm vs per-model p95
latency and utilization at each load, storage and memory bytes, accuracy deltas.

    python -m experiments.headline [results/runs] [results/headline.md]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from paper_figures._save import largest_scale


def _vs(ours: float, theirs: float) -> str:
    if not theirs:
        return "n/a"
    d = 100 * (1 - ours / theirs)
    return f"{d:.0f}% lower" if d >= 0 else f"{-d:.0f}% higher"


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _json_rows(runs: Path, experiment: str) -> list[dict]:
    [path] = largest_scale(runs, experiment, "json")
    return json.loads(path.read_text())["rows"]


def latency_rows(runs: Path) -> list[str]:
    from experiments.summary import table
    df = table(largest_scale(runs, "latency_vs_rate", "jsonl"))
    cells = []
    for rate, g in df.groupby("rate"):
        ref = g[g["system"] == "per_model"]["e2e_p95"]
        for _, r in g.sort_values("system").iterrows():
            vs = _vs(r["e2e_p95"], float(ref.iloc[0])) \
                if len(ref) and r["system"] != "per_model" else ""
            cells.append([f"{rate:g}", r["system"], f"{r['e2e_p95']:.1f}", f"{r['ttft_p95']:.2f}",
                          f"{r['tokens_per_s']:.1f}", f"{r['util_mean']:.2f}",
                          f"{r['mem_peak'] / 2**30:.2f}", vs])
    return _table(["rate (req/s)", "system", "p95 e2e (s)", "p95 TTFT (s)", "tokens/s",
                   "mean util", "peak mem (GiB)", "p95 vs per_model"], cells) + [
        f"\nutilization: {df['sampler'].iloc[0]} (scale {df['scale'].iloc[0]})"]


def footprint_rows(runs: Path) -> list[str]:
    rows = _json_rows(runs, "footprint")
    n = max(r["variants"] for r in rows)
    return _table(["variant kind", f"{n} variants + base: blockllm zoo (GiB)", "per-model (GiB)",
                   "ratio"],
                  [[r["kind"], f"{r['zoo_bytes'] / 2**30:.2f}",
                    f"{r['per_model_bytes'] / 2**30:.2f}",
                    f"{r['per_model_bytes'] / r['zoo_bytes']:.2f}x"]
                   for r in rows if r["variants"] == n])


def accuracy_rows(runs: Path) -> list[str]:
    rows = _json_rows(runs, "accuracy")
    cells = []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        exact = next(r for r in mine if r["label"] == "exact")
        best = max((r for r in mine if r["within_budget"]), key=lambda r: r["saved_bytes"])
        cells.append([model, f"{exact['score']:.0f}", f"{best['score']:.0f} ({best['label']})",
                      f"{best['drop_points']:+.0f}", f"{best['saved_bytes'] / 2**20:.0f}"])
    return _table(["model", "exact score", "served score (budget 1 pt)", "drop (points)",
                   "MiB freed"], cells)


def placement_rows(runs: Path) -> list[str]:
    return _table(["cluster", "placement", "hops/request", "link ms/request", "p50 e2e (s)",
                   "p95 e2e (s)", "max GPU util"],
                  [[r["cluster"], r["placement"], f"{r['transfers_per_request']:.0f}",
                    f"{r['transfer_ms_per_request']:.1f}", f"{r['e2e_p50']:.3f}",
                    f"{r['e2e_p95']:.3f}", f"{r['util_max']:.2f}"]
                   for r in _json_rows(runs, "placement")])


def sim_rows(runs: Path) -> list[str]:
    def warm(r: dict) -> list[str]:  # the in-process engine, where the run has it
        if "engine_warm_s" not in r:
            return ["-", "-", "-"]
        return [f"{r['engine_warm_s']:.2f}", f"{r['sim_warm_s']:.2f}",
                f"{r['engine_error_pct']:+.0f}%"]
    return _table(["rate (req/s)", "quantile", "HTTP server (s)", "simulated (s)", "error",
                   "warm engine (s)", "simulated (s)", "error"],
                  [[f"{r['rate']:g}", r["quantile"], f"{r['real_s']:.2f}", f"{r['sim_s']:.2f}",
                    f"{r['error_pct']:+.0f}%", *warm(r)]
                   for r in _json_rows(runs, "sim_validation")])


def headline(runs: Path) -> str:
    parts = ["# Headline (written by `python -m experiments.headline` from results/runs)\n"]
    for title, fn in [("Latency and utilization vs load (experiment 1)", latency_rows),
                      ("Storage = memory to serve all variants (experiment 2)", footprint_rows),
                      ("Accuracy of the chains served with equivalence (experiment 3)",
                       accuracy_rows),
                      ("Placement on simulated clusters (experiment 7)", placement_rows),
                      ("Simulator vs real runs of experiment 1 (one CPU device)", sim_rows)]:
        try:
            parts += [f"## {title}\n", *fn(runs), ""]
        except (FileNotFoundError, StopIteration, ValueError) as e:
            parts += [f"## {title}\n", f"not available: {e}", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "results/runs")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "results/headline.md")
    out.write_text(headline(runs))
    print(out.read_text())
