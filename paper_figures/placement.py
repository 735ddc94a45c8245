"""Experiment 7 figure: cross-device transfers and p95 latency per placement, per cluster
(simulated; A100 roofline latencies).

    python -m paper_figures.placement [results/runs] [paper_figures/out]
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

    [path] = largest_scale(results, "placement", "json")
    df = pd.DataFrame(json.loads(path.read_text())["rows"])
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (y, label) in zip(axes, [("transfers_per_request", "cross-device hops per request"),
                                     ("transfer_ms_per_request", "link time per request (ms)"),
                                     ("e2e_p95", "p95 end-to-end latency (s)")]):
        sns.barplot(df, x="cluster", y=y, hue="placement", ax=ax)
        ax.set(xlabel="", ylabel=label)
    axes[0].set_title("Placement (simulated, A100 roofline latencies)")
    fig.tight_layout()
    return save(fig, out_dir, "placement")


if __name__ == "__main__":
    main(draw, "results/runs")
