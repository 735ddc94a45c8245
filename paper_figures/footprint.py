"""Experiment 2 figure: zoo vs per-model bytes as variants are added, one panel per kind.

    python -m paper_figures.footprint [results/runs] [paper_figures/out]
"""

from __future__ import annotations

import json
from pathlib import Path

from paper_figures._save import largest_scale, main, save


def draw(results: Path, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    [path] = largest_scale(results, "footprint", "json")
    df = pd.DataFrame(json.loads(path.read_text())["rows"])
    long = pd.concat([df.assign(system="blockllm zoo", GiB=df["zoo_bytes"] / 2**30),
                      df.assign(system="per-model", GiB=df["per_model_bytes"] / 2**30)])
    sns.set_theme(style="whitegrid")
    g = sns.relplot(long, x="variants", y="GiB", hue="system", col="kind", kind="line",
                    marker="o", height=3.4, aspect=1.0)
    g.set_axis_labels("fine-tuned variants (+ base)", "storage = resident GiB to serve all")
    return save(g.figure, out_dir, "footprint")


if __name__ == "__main__":
    main(draw, "results/runs")
