"""Experiment 3 figure (accuracy impact of equivalence): score drop and bytes saved per
threshold per model; stitching. Reads `blockllm bench run accuracy` results (or the
results/equivalence.json that `blockllm zoo equivalence` writes).

    python -m paper_figures.equivalence [results/runs | results/equivalence.json]
                                        [paper_figures/out]
"""

from __future__ import annotations

import json
from pathlib import Path

from paper_figures._save import largest_scale, main, save


def draw(results: Path, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    if results.is_dir():
        [results] = largest_scale(results, "accuracy", "json")
    data = json.loads(results.read_text())
    rows = pd.DataFrame(data["rows"])
    sweep = rows[rows["threshold"].notna()].copy()
    sweep["saved MiB"] = sweep["saved_bytes"] / 2**20
    sns.set_theme(style="whitegrid")
    n = 3 if data.get("stitch") else 2
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2))
    sns.lineplot(sweep, x="threshold", y="drop_points", hue="model", marker="o", ax=axes[0])
    budget = float(rows["budget"].max())
    axes[0].axhline(budget, color="k", ls="--", lw=1, label=f"budget ({budget:g} point)")
    axes[0].set(xscale="log", xlabel="equivalence threshold (mean rel. L2 of block update)",
                ylabel="task-score drop (points)", title="Accuracy cost of substitution")
    axes[0].legend(fontsize=7)
    sns.lineplot(sweep, x="threshold", y="saved MiB", hue="model", marker="o", ax=axes[1],
                 legend=False)
    axes[1].set(xscale="log", xlabel="equivalence threshold", ylabel="resident MiB saved",
                title="Memory saved by substitution")
    if n == 3:
        st = pd.DataFrame([{"chain": k, "score": s[f"{k}_score"],
                            "case": f"{s['donor']}[:{s['cut']}] + {s['model']}"}
                           for s in data["stitch"] for k in ("exact", "swap", "stitched")])
        sns.barplot(st, x="case", y="score", hue="chain", ax=axes[2])
        axes[2].set(xlabel="", ylabel="task score", title="Stitching vs plain swap")
        axes[2].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return save(fig, out_dir, "equivalence")


if __name__ == "__main__":
    main(draw, "results/runs")
