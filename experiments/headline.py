"""The measured figures, written from results/ only, never by hand: results/headline.md (from
results/runs: blockllm against the best peer, vLLM per-model or multi-LoRA where measured, and
per-model serving on our engine at each point of the serving experiments; storage, accuracy,
placement, the simulator) and docs/results.md (the headline beside the serving and decode
benchmarks' own tables). `make reproduce` runs it; tests/test_generated.py fails when a
committed file differs from what this writes from the committed results.

    python -m experiments.headline [results/runs] [results/headline.md] [docs/results.md]
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


PEERS = ("vllm_per_model", "vllm_lora")  # what a user would deploy instead (vLLM)


def best_peer(g) -> tuple[str, float] | tuple[None, None]:
    """The peer (vLLM mode) with the lowest p95 end-to-end latency at one point; its name says
    so where its servers were started on demand (the budget did not hold them all: read the
    gap as "does not fit", not as a faster step)."""
    peers = g[g["system"].isin(PEERS)]
    if not len(peers):
        return None, None
    r = peers.loc[peers["e2e_p95"].idxmin()]
    started = " (servers started on demand)" if r.get("on_demand") is True else ""
    return r["system"] + started, float(r["e2e_p95"])


def serving_rows(runs: Path, experiment: str, x: str, xlabel: str) -> list[str]:
    """One row per system and point: p50/p95 e2e, p50 TTFT and TPOT, tokens/s, utilization,
    peak memory; blockllm's p95 against the best peer and against per_model."""
    from experiments.summary import table
    df = table(largest_scale(runs, experiment, "jsonl"))
    by = ["budget", x] if "budget" in df and df["budget"].notna().all() else [x]
    cells, off, starts = [], [], []
    for key, g in df.groupby(by):
        value = key[-1]
        where = f"{key[0]} weights" if len(by) == 2 else ""
        peer, peer_p95 = best_peer(g)
        pm = g[g["system"] == "per_model"]["e2e_p95"]
        for _, r in g.sort_values("system").iterrows():
            ours = r["system"] == "blockllm"
            vs_peer = f"{_vs(r['e2e_p95'], peer_p95)} than {peer}" if ours and peer else ""
            vs_pm = _vs(r["e2e_p95"], float(pm.iloc[0])) if ours and len(pm) else ""
            if r.get("on_demand") is True:
                starts.append(f"{key[0]}, {x} {value:g}, {r['system']}: "
                              f"{r['server_starts']:.0f} starts, {r['server_start_s']:.0f} s")
            if r.get("tokens_off"):
                off.append(f"{r['system']} at {x}={value:g}: {r['tokens_off']} requests")
            cells.append([where, f"{value:g}", r["system"], f"{r['e2e_p50']:.2f}",
                          _ci(r), f"{r['ttft_p50']:.2f}",
                          f"{1000 * r['tpot_p50']:.0f}", f"{r['tokens_per_s']:.1f}",
                          f"{r['util_mean']:.2f}", f"{r['mem_peak'] / 2**30:.2f}",
                          vs_peer, vs_pm])
    notes = [f"\nutilization and memory: {df['sampler'].iloc[0]} (scale {df['scale'].iloc[0]})"]
    if starts:
        notes.append("**vLLM servers started on demand** (the budget cannot hold every "
                     "variant's server at once, so the router stops one and starts another; "
                     "requests wait for the start): " + "; ".join(starts))
    if off:
        notes.append("**Unequal work** (generated another token count than asked; their "
                     "latencies do not compare): " + "; ".join(off))
    return _table(["budget", xlabel, "system", "p50 e2e (s)", "p95 e2e (s) (95% interval)",
                   "p50 TTFT (s)", "p50 TPOT (ms)", "tokens/s", "mean util", "peak mem (GiB)",
                   "blockllm p95 vs best peer", "vs per_model"], cells) + notes


def _has_ci(r) -> bool:
    lo = r.get("e2e_p95_lo")
    return lo is not None and lo == lo  # None, or NaN in a frame: under 2 requests answered


def _ci(r) -> str:
    """p95 e2e with its bootstrap 95% interval (experiments.summary.quantile_ci)."""
    if not _has_ci(r):
        return f"{r['e2e_p95']:.2f}"
    return f"{r['e2e_p95']:.2f} ({r['e2e_p95_lo']:.2f}-{r['e2e_p95_hi']:.2f})"


def against_full(full, r) -> str:
    """The full system's p95 against a configuration's, where their intervals do not overlap;
    where they do, this run does not tell them apart."""
    if not (_has_ci(full) and _has_ci(r)):
        return "no interval (under 2 requests answered)"
    if r["e2e_p95_lo"] > full["e2e_p95_hi"] or r["e2e_p95_hi"] < full["e2e_p95_lo"]:
        return _vs(full["e2e_p95"], r["e2e_p95"])
    return "not told apart (intervals overlap)"


def ablation_rows(runs: Path) -> list[str]:
    """Every mechanism on, then one off: p95 e2e with its interval against the full system's."""
    from experiments.configs.ablations import SYSTEMS
    from experiments.summary import table
    df = table(largest_scale(runs, "ablations", "jsonl")).set_index("system")
    if "full" not in df.index:
        raise ValueError("no run of the full system to compare with")
    full = df.loc["full"]
    cells = [[name, f"{r['e2e_p50']:.2f}", _ci(r), f"{1000 * r['tpot_p50']:.0f}",
              f"{r['tokens_per_s']:.1f}", "" if name == "full" else against_full(full, r)]
             for name, r in ((s, df.loc[s]) for s in SYSTEMS if s in df.index)]
    return _table(["configuration", "p50 e2e (s)", "p95 e2e (s) (95% interval)",
                   "p50 TPOT (ms)", "tokens/s", "full system's p95 vs this"], cells) + [
        f"\n{int(full['requests'])} requests at {full['rate']:g} req/s (scale "
        f"{full['scale']}); intervals: bootstrap over the run's requests"]


def latency_rows(runs: Path) -> list[str]:
    return serving_rows(runs, "latency_vs_rate", "rate", "rate (req/s)")


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
    """One row per cluster, cost of a hop between servers and placement: every hop (block to
    block) and the hops between servers per request, their link time, latency, utilization."""
    return _table(["cluster", "hop between servers (us)", "placement", "hops/request",
                   "between servers/request", "link ms/request", "p50 e2e (s)", "p95 e2e (s)",
                   "max GPU util"],
                  [[r["cluster"], f"{r['inter_hop_us']:g}", r["placement"],
                    f"{r['transfers_per_request']:.0f}",
                    f"{r.get('network_hops_per_request', float('nan')):.0f}",
                    f"{r['transfer_ms_per_request']:.1f}", f"{r['e2e_p50']:.3f}",
                    f"{r['e2e_p95']:.3f}", f"{r['util_max']:.2f}"]
                   for r in _json_rows(runs, "placement")])


def sim_rows(runs: Path) -> list[str]:
    def warm(r: dict) -> list[str]:  # the in-process engine, where the run has it
        if "engine_warm_s" not in r:
            return ["-", "-", "-"]
        return [f"{r['engine_warm_s']:.2f}", f"{r['sim_warm_s']:.2f}",
                f"{r['engine_error_pct']:+.0f}%"]
    return _table(["budget", "rate (req/s)", "quantile", "HTTP server (s)", "simulated (s)",
                   "error", "warm engine (s)", "simulated (s)", "error"],
                  [[r.get("budget") or "", f"{r['rate']:g}", r["quantile"], f"{r['real_s']:.2f}",
                    f"{r['sim_s']:.2f}", f"{r['error_pct']:+.0f}%", *warm(r)]
                   for r in _json_rows(runs, "sim_validation")])


def headline(runs: Path) -> str:
    parts = ["# Headline (written by `python -m experiments.headline` from results/runs)\n"]
    for title, fn in [("Latency and utilization vs load (experiment 1)", latency_rows),
                      ("Scaling in the number of variants (experiment 5)",
                       lambda r: serving_rows(r, "scaling", "n_models", "models")),
                      ("Burstiness (experiment 6)",
                       lambda r: serving_rows(r, "burstiness", "cv", "CV")),
                      ("Ablations (experiment 4)", ablation_rows),
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


BENCHMARKS = [("blockllm vs vLLM, driven by `vllm bench serve`", "bench_serving.md"),
              ("The same on an AVX2-only CPU (AMD EPYC)", "bench_serving-epyc.md"),
              ("Decode at batch 1 against transformers and the bandwidth bound (`make bench`)",
               "bench_decode.md"),
              ("The same on an AVX2-only CPU (AMD EPYC)", "bench_decode-epyc.md"),
              ("Decoder matmuls by path and rows (`python -m benchmarks.matmul_layout`)",
               "bench_matmul_layout.md"),
              ("The same on an AVX2-only CPU (AMD EPYC)", "bench_matmul_layout-epyc.md"),
              ("Packed weights (layer by layer) against plain ones (the kernel, one call per "
               "block) on the AVX2 CPU (`python -m benchmarks.engine_decode --knob packed`)",
               "bench_engine_decode-packed-epyc.md"),
              ("Streaming text work per token (`python -m benchmarks.streaming`)",
               "bench_streaming.md"),
              ("lm-evaluation-harness against the server (`python -m experiments.lm_eval_check`)",
               "lm_eval.md"),
              ("Decode steps in one native call per block (`python -m benchmarks.engine_decode "
               "--knob fused`)", "bench_engine_decode-fused.md"),
              ("Where decode steps leave the skinny kernel (`python -m benchmarks.engine_decode`)",
               "bench_engine_decode-skinny_rows.md"),
              ("KV pages by sharing degree (`python -m benchmarks.kv_split`)",
               "bench_kv_split.md"),
              ("The wave rule: a pass as a cycle against chain order, one model, replayed in "
               "process (`python -m benchmarks.replay --field wave_order`)",
               "bench_replay-wave_order.md"),
              ("The same on base + 2 partial fine-tunes", "bench_replay-wave_order-partial.md")]


def results_doc(results: Path, headline_text: str) -> str:
    """docs/results.md: the benchmarks' tables (as their commands wrote them) and the headline,
    headings one level down."""
    parts = ["# Measured results (written by `python -m experiments.headline`; do not edit)\n",
             "Every figure below comes from a file in results/ that a command wrote; the "
             "command is named in each section. Earlier figures: docs/results-history.md.\n"]
    for title, name in BENCHMARKS:
        path = results / name
        body = path.read_text().split("\n", 1)[1] if path.exists() else "not measured yet\n"
        parts += [f"## {title} (results/{name})\n", body.strip() + "\n"]
    body = headline_text.split("\n", 1)[1].replace("\n## ", "\n### ")
    parts += ["## Experiments (`make reproduce`; results/headline.md)\n", body.strip() + "\n"]
    return "\n".join(parts)


def write_all(runs: Path, headline_md: Path, doc: Path) -> list[Path]:
    text = headline(runs)
    headline_md.write_text(text)
    doc.write_text(results_doc(runs.parent, text))
    return [headline_md, doc]


if __name__ == "__main__":
    args = sys.argv[1:] + [None] * 3
    runs = Path(args[0] or "results/runs")
    for path in write_all(runs, Path(args[1] or "results/headline.md"),
                          Path(args[2] or "docs/results.md")):
        print(f"wrote {path}")
