"""Benchmark figures: blockllm vs vLLM side by side (`python -m benchmarks.serving`; and every
run's ratios against issue 15's targets, one point per results/bench_serving*.json), a head
batch's sampling on the device vs per row on the host (`python -m benchmarks.sampling`), and
CPU matmuls by path: MKL, oneDNN packed, the skinny kernel (`python -m benchmarks.matmul_layout`),
and one engine setting against another on a replayed trace (`python -m benchmarks.replay`).

    python -m paper_figures.benchmarks [results] [paper_figures/out]
"""

from __future__ import annotations

import json
from pathlib import Path

from paper_figures._save import main, save

WORKLOAD_LABELS = {"one-model": "one model", "lora": "base + 2 LoRA",
                   "partial": "base + 2 partial fine-tunes"}


def draw(results: Path, out_dir: Path) -> list[Path]:
    paths = []
    if (results / "bench_serving.json").exists():
        paths += serving(results / "bench_serving.json", out_dir)
        paths += serving_runs(sorted(results.glob("bench_serving*.json")), out_dir)
    if (results / "bench_sampling.json").exists():
        paths += sampling(results / "bench_sampling.json", out_dir)
    for path in sorted(results.glob("bench_matmul_layout*.json")):  # one per CPU measured
        paths += matmul_layout(path, out_dir)
    for path in sorted(results.glob("bench_replay-*.json")):
        paths += replay(path, out_dir)
    if not paths:
        raise FileNotFoundError(f"no bench_serving.json, bench_sampling.json or "
                                f"bench_matmul_layout.json in {results}: run `python -m "
                                "benchmarks.serving`, `.sampling` or `.matmul_layout` first")
    return paths


def serving(path: Path, out_dir: Path) -> list[Path]:
    """p95 and p50 end-to-end latency per workload and rate, blockllm beside vLLM."""
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(json.loads(path.read_text()))
    df["workload"] = df["workload"].map(WORKLOAD_LABELS).fillna(df["workload"])
    df["system"] = df["system"].replace({"vllm": "vLLM (multi-LoRA; per model for partial)"})
    long = pd.concat([df.assign(quantile=q, seconds=df[f"{q}_e2el_ms"] / 1e3)
                      for q in ("p50", "p95")], ignore_index=True)
    long["rate"] = long["rate"].map(lambda r: f"{r:g} req/s")
    sns.set_theme(style="whitegrid")
    g = sns.catplot(long, x="rate", y="seconds", hue="system", col="workload", row="quantile",
                    kind="bar", height=2.8, aspect=1.1, sharey=False)
    g.set_axis_labels("", "end-to-end latency (s)")
    g.set_titles("{col_name}, {row_name}")
    g.figure.subplots_adjust(top=0.86)
    g.figure.suptitle("blockllm vs vLLM, same CPU, weights and trace (vllm bench serve)")
    return save(g.figure, out_dir, "bench_serving")


# facet -> (workload, metric of `vllm bench serve`, target of ours / vLLM's: issue 15's, as
# benchmarks.serving.TARGETS, which this installed package cannot import)
RATIOS = {
    "one model, p95 e2e": ("one-model", "p95_e2el_ms", 1.0),
    "one model, p50 TPOT": ("one-model", "p50_tpot_ms", 1.1),
    "base + 2 LoRA, p95 e2e": ("lora", "p95_e2el_ms", 0.5),
    "base + 2 partial, p95 e2e": ("partial", "p95_e2el_ms", 0.6),
}


def serving_runs(paths: list[Path], out_dir: Path) -> list[Path]:
    """Ours / vLLM's within each run of the serving benchmark, against the targets (dashed):
    the machines' speed swings between runs, their ratios are what compare."""
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    rows = []
    for path in paths:
        by = {(r["workload"], r["rate"], r["system"]): r for r in json.loads(path.read_text())}
        run = path.stem.removeprefix("bench_serving").lstrip("-") or "main (Xeon)"
        for facet, (workload, metric, _) in RATIOS.items():
            for (w, rate, system), r in by.items():
                if w == workload and system == "blockllm" and (w, rate, "vllm") in by:
                    rows.append({"facet": facet, "run": run, "rate": f"{rate:g} req/s",
                                 "ratio": r[metric] / by[w, rate, "vllm"][metric]})
    if not rows:
        return []
    sns.set_theme(style="whitegrid")
    df = pd.DataFrame(rows)
    g = sns.catplot(df, x="rate", y="ratio", hue="run", col="facet", kind="strip",
                    col_order=[f for f in RATIOS if f in set(df["facet"])],
                    order=sorted(set(df["rate"]), key=lambda r: float(r.split()[0])),
                    dodge=True, jitter=False, size=7, height=3, aspect=0.8)
    for facet, ax in g.axes_dict.items():
        ax.axhline(RATIOS[facet][2], ls="--", c="grey")
    g.set(yscale="log")
    g.set_axis_labels("", "ours / vLLM's (lower is better)")
    g.set_titles("{col_name}")
    g.figure.subplots_adjust(top=0.82)
    g.figure.suptitle("blockllm / vLLM within each run of benchmarks.serving; dashed: target")
    return save(g.figure, out_dir, "bench_serving_runs")


def sampling(path: Path, out_dir: Path) -> list[Path]:
    """Milliseconds per head batch against its size, batched on the device vs per row."""
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(json.loads(path.read_text())["rows"])
    long = pd.concat([df.assign(sampler="on the device, batched", ms=df["device_batched_ms"]),
                      df.assign(sampler="per row on the host (before)",
                                ms=df["host_per_row_ms"])], ignore_index=True)
    sns.set_theme(style="whitegrid")
    g = sns.relplot(long, x="batch", y="ms", hue="sampler", col="logits", kind="line",
                    marker="o", height=3.2, aspect=1.1)
    g.set(xscale="log", yscale="log")
    g.set_axis_labels("requests in the head's batch", "ms to pick their tokens")
    return save(g.figure, out_dir, "bench_sampling")


def matmul_layout(path: Path, out_dir: Path) -> list[Path]:
    """Milliseconds for a model's decoder matmuls against rows, per weight layout, and the
    bandwidth bound."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    r = json.loads(path.read_text())
    df = pd.DataFrame(r["rows"])
    paths = [("plain, F.linear (MKL)", "mkl_ms"), ("plain, oneDNN", "onednn_plain_ms"),
             ("oneDNN packed", "packed_ms"), ("skinny kernel (native)", "skinny_ms")]
    long = pd.concat([df.assign(layout=name, ms=df[col]) for name, col in paths
                      if col in df and df[col].notna().any()], ignore_index=True)
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(5, 3.4))
    sns.lineplot(long, x="rows", y="ms", hue="layout", marker="o", ax=ax)
    ax.axhline(df["bound_ms"].iloc[0], ls="--", c="grey", label="bandwidth bound")
    ax.set(xscale="log", yscale="log", xlabel="rows (tokens) per matmul",
           ylabel=f"ms for {r['layers']} layers' matmuls")
    ax.set_title(f"{r['preset']} fp32 on {r['cpu_model']}", fontsize=9)
    ax.legend(fontsize=8)
    return save(fig, out_dir, path.stem)


def replay(path: Path, out_dir: Path) -> list[Path]:
    """Each round's latency quantiles per setting (points), and their medians (bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    r = json.loads(path.read_text())
    df = pd.DataFrame(r["rows"])
    names = {"ttft_p50": "TTFT p50", "ttft_p95": "TTFT p95", "e2e_p50": "end-to-end p50",
             "e2e_p95": "end-to-end p95"}
    long = pd.concat([df.assign(metric=label, seconds=df[m]) for m, label in names.items()],
                     ignore_index=True)
    sns.set_theme(style="whitegrid")
    g = sns.catplot(long, x="value", y="seconds", col="metric", kind="bar", estimator="median",
                    errorbar=None, alpha=0.5, height=2.8, aspect=0.8, sharey=False)
    for ax, label in zip(g.axes.flat, names.values()):
        sns.stripplot(long[long["metric"] == label], x="value", y="seconds", ax=ax, color="k",
                      size=3)
    g.set_axis_labels(r["field"], "seconds")
    g.set_titles("{col_name}")
    g.figure.subplots_adjust(top=0.8)
    g.figure.suptitle(f"{r['field']}: {r['rounds']} alternating replays at {r['rate']:g} req/s "
                      f"({', '.join(r['models'])}); bars: medians")
    return save(g.figure, out_dir, path.stem)


if __name__ == "__main__":
    main(draw, "results")
