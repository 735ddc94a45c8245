"""Experiment 1 figure: p95 end-to-end latency and utilization vs request rate, per system.

    python -m paper_figures.latency_vs_rate [results/runs] [paper_figures/out]
"""

from __future__ import annotations

from pathlib import Path

from paper_figures._save import main, save


def draw(results: Path, out_dir: Path, scale: str | None = None) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from experiments.summary import table
    paths = sorted(results.glob("latency_vs_rate-*.jsonl"))
    if scale:
        paths = [p for p in paths if f"-{scale}-" in p.name]
    df = table(paths)
    sns.set_theme(style="whitegrid")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    sns.lineplot(df, x="rate", y="e2e_p95", hue="system", marker="o", ax=ax1)
    ax1.set(xlabel="request rate (req/s)", ylabel="p95 end-to-end latency (s)",
            title="Latency vs load")
    sns.lineplot(df, x="rate", y="util_mean", hue="system", marker="o", ax=ax2)
    what = "GPU" if (df["sampler"] == "nvml-gpu0").all() else "server process CPU"
    ax2.set(xlabel="request rate (req/s)", ylabel=f"mean {what} utilization",
            title=f"Utilization ({what})")
    fig.tight_layout()
    return save(fig, out_dir, "latency_vs_rate")


if __name__ == "__main__":
    main(draw, "results/runs")
