"""`blockllm bench run CONFIG` and `blockllm bench summary RESULTS`."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from blockllm.cli import user_errors


@click.group()
def bench() -> None:
    """Experiments: replay seeded traces against servers started on localhost."""


@bench.command("run")
@click.argument("config")
@click.option("--scale", default="cpu-small", show_default=True,
              type=click.Choice(["toy", "cpu-small", "gpu-full"]))
@click.option("--out", default="results/runs", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--models", default=None, help="Comma-separated zoo models (default: all).")
@click.option("--zoo", "zoo_dir", default=None, type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True,
              help="Keep results files that already hold their whole trace (same trace "
                   "config); run only the missing points.")
@user_errors
def run(config, scale, out, models, zoo_dir, resume):
    """Run experiment CONFIG at a scale: latency_vs_rate, footprint, accuracy, ablations,
    scaling, burstiness, placement or sim_validation (see experiments/configs)."""
    from blockllm.errors import UserError
    from blockllm.zoo.store import Zoo
    from experiments.configs import CONFIGS, OWN_MODELS
    if config not in CONFIGS:
        raise UserError(f"unknown experiment {config!r}; choose one of {', '.join(CONFIGS)}")
    names = [m.strip() for m in models.split(",")] if models else \
        [] if config in OWN_MODELS else Zoo(zoo_dir).models()
    if not names and config not in OWN_MODELS:
        raise UserError("the zoo has no models: run `blockllm zoo make-variants` first")
    mod = importlib.import_module(f"experiments.configs.{config}")
    if resume:
        import experiments.configs._serving as serving
        serving.RESUME = True
    paths = mod.run(scale, Path(out), zoo_dir, names)
    click.echo("\n".join(str(p) for p in paths))


@bench.command()
@click.argument("results", type=click.Path(exists=True))
@user_errors
def summary(results):
    """p50/p95/p99 TTFT, TPOT and end-to-end latency, throughput, utilization per run."""
    from experiments.summary import table
    path = Path(results)
    paths = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    df = table(paths)
    cols = ["experiment", "scale", "system", "rate", "cv", "n_models", "ok", "requests",
            "tokens_per_s", "ttft_p50", "ttft_p95",
            "tpot_p50", "e2e_p50", "e2e_p95", "e2e_p99", "util_mean", "mem_peak", "sampler"]
    click.echo(df[[c for c in cols if c in df]].to_string(index=False, float_format="%.3f"))
    out = (path if path.is_dir() else path.parent) / "summary.csv"
    df.to_csv(out, index=False)
    click.echo(f"wrote {out}")
