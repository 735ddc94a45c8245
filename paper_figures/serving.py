"""Figures of the serving experiments (1, 4, 5, 6): p95 latency, throughput and utilization,
per system, from the JSONL results only.

    python -m paper_figures.serving [results/runs] [paper_figures/out]
"""

from __future__ import annotations

from pathlib import Path

from paper_figures._save import largest_scale, main, save

# experiment -> (x column, x label, title)
LINES = {
    "latency_vs_rate": ("rate", "request rate (req/s)", "Latency vs load"),
    "scaling": ("n_models", "models served", "Scaling in the number of variants"),
    "burstiness": ("cv", "CV of inter-arrival times (1 = Poisson)", "Burstiness"),
}


def _util_label(df) -> str:
    return "GPU" if (df["sampler"] == "nvml-gpu0").all() else "server process CPU"


def draw_lines(results: Path, out_dir: Path, experiment: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from experiments.summary import table
    x, xlabel, title = LINES[experiment]
    df = table(largest_scale(results, experiment, "jsonl"))
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (y, ylabel) in zip(axes, [("e2e_p95", "p95 end-to-end latency (s)"),
                                      ("tokens_per_s", "throughput (tokens/s)"),
                                      ("util_mean", f"mean {_util_label(df)} utilization")]):
        style = "budget" if "budget" in df and df["budget"].notna().all() else None
        sns.lineplot(df, x=x, y=y, hue="system", style=style, marker="o", ax=ax)
        ax.set(xlabel=xlabel, ylabel=ylabel)
    axes[0].set_title(title)
    axes[0].set_yscale("log")  # peers that start servers on demand take minutes, ours ~1 s
    for ax in axes[:2]:  # one legend, beside the last panel, clear of the lines
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if axes[2].get_legend() is not None:
        sns.move_legend(axes[2], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    if experiment == "scaling":
        axes[0].set_xscale("log", base=2)
    fig.tight_layout()
    return save(fig, out_dir, experiment)


def draw_ablations(results: Path, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from experiments.configs.ablations import SYSTEMS
    from experiments.summary import table
    df = table(largest_scale(results, "ablations", "jsonl"))
    order = [s for s in SYSTEMS if s in set(df["system"])]
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (y, ylabel) in zip(axes, [("e2e_p95", "p95 end-to-end latency (s)"),
                                      ("ttft_p95", "p95 time to first token (s)"),
                                      ("tokens_per_s", "throughput (tokens/s)")]):
        sns.barplot(df, x="system", y=y, order=order, ax=ax, color="tab:blue")
        if y == "e2e_p95":  # bootstrap 95% intervals (experiments.summary.quantile_ci)
            d = df.set_index("system").loc[order]
            lo, hi = (pd.to_numeric(d[c]) for c in ("e2e_p95_lo", "e2e_p95_hi"))
            ax.errorbar(range(len(order)), d[y], fmt="none", ecolor="black", capsize=3,
                        yerr=[(d[y] - lo).clip(lower=0), (hi - d[y]).clip(lower=0)])
        ax.set(xlabel="", ylabel=ylabel)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    axes[0].set_title("Ablations: every mechanism on, then one off")
    fig.tight_layout()
    return save(fig, out_dir, "ablations")


def draw(results: Path, out_dir: Path) -> list[Path]:
    paths = []
    for experiment in LINES:
        try:
            paths += draw_lines(results, out_dir, experiment)
        except FileNotFoundError as e:
            print(e)
    return paths + draw_ablations(results, out_dir)


if __name__ == "__main__":
    main(draw, "results/runs")
