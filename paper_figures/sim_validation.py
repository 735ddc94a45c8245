"""Simulator vs real runs: p50 and p95 e2e latency, real against simulated, per rate; the CPU
HTTP server and the warm in-process engine (runs/sim_validation-*.json), and the warm engine on
an H100 (gpu/gpu_validation-*.json) where a GPU session wrote one. The band is +-15%.

    python -m paper_figures.sim_validation [results] [paper_figures/out]
"""

from __future__ import annotations

import json
from pathlib import Path

from paper_figures._save import largest_scale, main, save


def _rows(results: Path) -> list[dict]:
    [path] = largest_scale(results / "runs", "sim_validation", "json")
    rows = []
    for r in json.loads(path.read_text())["rows"]:
        budget = f", {r['budget']}" if r.get("budget") else ""
        rows.append({"setting": f"CPU, HTTP server{budget}", "q": r["quantile"],
                     "real": r["real_s"], "sim": r["sim_s"]})
        if "engine_warm_s" in r:
            rows.append({"setting": "CPU, warm engine", "q": r["quantile"],
                         "real": r["engine_warm_s"], "sim": r["sim_warm_s"]})
    for gpu in sorted((results / "gpu").glob("gpu_validation-*.json")):  # gpu_check --name
        data = json.loads(gpu.read_text())
        label = "H100" if "H100" in data["device"] else data["device"]
        for r in data["validation"]:
            for q in ("p50", "p95"):
                rows.append({"setting": f"{label}, warm engine", "q": q, "real": r["real"][q],
                             "sim": r["sim"][q]})
    return rows


def draw(results: Path, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(_rows(results))
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 5))
    top = float(max(df["real"].max(), df["sim"].max())) * 1.1
    ax.plot([0, top], [0, top], color="black", lw=1)
    ax.fill_between([0, top], [0, 0.85 * top], [0, 1.15 * top], color="grey", alpha=0.2,
                    label="within 15%")
    sns.scatterplot(df, x="real", y="sim", hue="setting", style="q", s=70, ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="real e2e latency (s)",
           ylabel="simulated e2e latency (s)", title="Simulator vs real runs")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    fig.tight_layout()
    return save(fig, out_dir, "sim_validation")


if __name__ == "__main__":
    main(draw, "results")
