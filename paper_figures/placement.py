"""Experiment 7 figure: hops over the network, link time and p95 latency per placement, per
cluster (rows) and cost of a hop between servers (x) (simulated; A100 roofline latencies).

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
    df = df[df.placement != "selected"]  # drawn as the candidate it picked (see the JSON)
    clusters = list(dict.fromkeys(df.cluster))
    metrics = [("network_hops_per_request", "hops between servers per request"),
               ("transfer_ms_per_request", "link time per request (ms)"),
               ("e2e_p95", "p95 end-to-end latency (s)")]
    fig, axes = plt.subplots(len(clusters), 3, figsize=(15, 3.8 * len(clusters)), squeeze=False)
    for row, cluster in zip(axes, clusters, strict=True):
        part = df[df.cluster == cluster]
        for ax, (y, label) in zip(row, metrics, strict=True):
            sns.barplot(part, x="inter_hop_us", y=y, hue="placement", ax=ax)
            ax.set(xlabel="cost of a hop between servers (us)", ylabel=label)
            ax.set_title(f"{cluster}: {label}", fontsize=10)
            if ax is row[0]:
                ax.legend(loc="upper left", fontsize=8, title="placement", title_fontsize=8)
            else:
                ax.get_legend().remove()
    fig.suptitle("Placement (simulated, A100 roofline latencies)")
    fig.tight_layout()
    return save(fig, out_dir, "placement")


if __name__ == "__main__":
    main(draw, "results/runs")
