"""blockllm serve vs vLLM, side by side, driven by vLLM's own client (`vllm bench serve`).

    python -m benchmarks.serving [--zoo DIR] [--rates 1,2] [--prompts 60] [--out results/...]

Three workloads on the same SmolLM2 weights (fp32), each system given both cores:
  one-model   smollm2 alone: blockllm vs one vLLM server
  lora        base + 2 LoRA adapters: blockllm vs one vLLM server with --enable-lora
  partial     base + 2 partial fine-tunes (top 4 of 30 layers): blockllm vs one vLLM server
              per model, one thread each (the tuned per-model deployment)
Each point: random prompts of 128 tokens, 32 output tokens (--ignore-eos), greedy, seed 0,
Poisson arrivals; with several models `--lora-modules` makes vllm bench pick one per request.
Every system runs behind one endpoint (vLLM behind the baseline's router, as in the
experiments). Also recorded: blockllm's block calls per generated token (from /metrics) and,
for one model, the cold start: the highest rate is the first point on a fresh server (nothing
has run on it), then run again at once, warm; the other rates follow.
Writes JSON and a markdown table with the ratios the engine targets (issue 15).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import click
import httpx
from tqdm import tqdm

from baselines.vllm_deploy import peers_python
from experiments.server_proc import metric, server_process

WORKLOADS = {  # name -> (models, vLLM mode)
    "one-model": (["smollm2"], "per-model"),
    "lora": (["smollm2", "smollm2-sentiment-lora", "smollm2-upper-lora"], "lora"),
    "partial": (["smollm2", "smollm2-arith-top4", "smollm2-reverse-top4"], "per-model"),
}
# targets of issue 15 (ours / vLLM's): p95 e2e and TPOT p50
TARGETS = {"one-model": (1.0, 1.1), "lora": (0.5, None), "partial": (0.6, None)}


def bench(url: str, models: list[str], tokenizer: Path, rate: float, prompts: int,
          out: Path) -> dict:
    """One `vllm bench serve` point; its summary (milliseconds) and per-request output lens."""
    name = f"bench-{rate:g}.json"
    cmd = [str(peers_python().parent / "vllm"), "bench", "serve", "--backend", "openai",
           "--base-url", url, "--model", models[0], "--tokenizer", str(tokenizer),
           "--dataset-name", "random", "--random-input-len", "128", "--random-output-len",
           "32", "--ignore-eos", "--temperature", "0", "--num-prompts", str(prompts),
           "--request-rate", str(rate), "--seed", "0", "--percentile-metrics",
           "ttft,tpot,e2el", "--metric-percentiles", "50,95", "--save-result",
           "--save-detailed", "--result-dir", str(out), "--result-filename", name]
    if len(models) > 1:
        cmd += ["--lora-modules", *models]
    p = subprocess.run(cmd, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"},
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed: {p.stdout[-1500:]}{p.stderr[-1500:]}")
    r = json.loads((out / name).read_text())
    keep = ("p50_ttft_ms", "p95_ttft_ms", "p50_tpot_ms", "p95_tpot_ms", "p50_e2el_ms",
            "p95_e2el_ms", "output_throughput", "completed", "failed")
    return {**{k: r[k] for k in keep}, "output_lens": sorted(set(r["output_lens"]))}


def system_argv(system: str, models: list[str], mode: str, zoo: str | None) -> list[str]:
    common = ["--models", ",".join(models), "--memory-budget", "4GiB", "--kv-budget", "1GiB"]
    common += ["--zoo", zoo] if zoo else []
    if system == "blockllm":
        return ["-m", "blockllm.cli", "serve", *common]
    return ["-m", "baselines.vllm_server", "--mode", mode, *common]


def run_workload(name: str, rates: list[float], prompts: int, zoo: str | None,
                 tokenizer: Path, tmp: Path) -> list[dict]:
    models, mode = WORKLOADS[name]
    rows = []
    if name == "one-model":  # the cold point first: the highest rate on a fresh server
        rates = sorted(rates, reverse=True)
    for system in ("blockllm", "vllm"):
        with server_process(system_argv(system, models, mode, zoo), timeout_s=1200) as (url, _):
            for i, rate in enumerate(rates):
                before = httpx.get(url + "/metrics").text
                r = bench(url, models, tokenizer, rate, prompts, tmp)
                after = httpx.get(url + "/metrics").text
                row = {"workload": name, "system": system, "rate": rate, **r}
                if system == "blockllm":
                    calls = metric(after, "blockllm_block_calls_total") - \
                        metric(before, "blockllm_block_calls_total")
                    toks = metric(after, "blockllm_tokens_total") - \
                        metric(before, "blockllm_tokens_total")
                    row["calls_per_token"] = calls / max(1, toks)
                if name == "one-model" and i == 0:  # the cold point again, warm
                    row["warm_rerun"] = bench(url, models, tokenizer, rate, prompts, tmp)
                rows.append(row)
    return rows


def table(rows: list[dict]) -> list[str]:
    out = ["| workload | rate | system | p50 e2e (s) | p95 e2e (s) | p50 TTFT (ms) | "
           "p50 TPOT (ms) | tok/s | ours/vLLM p95 (target) | ours/vLLM TPOT (target) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["workload"], r["rate"], r["system"]): r for r in rows}
    for (w, rate, system), r in sorted(by.items()):
        ratio = ""
        if system == "blockllm" and (w, rate, "vllm") in by:
            v = by[w, rate, "vllm"]
            p95, tpot = TARGETS[w]
            ratio = f"{r['p95_e2el_ms'] / v['p95_e2el_ms']:.2f} (<= {p95})"
            tp = r["p50_tpot_ms"] / v["p50_tpot_ms"]
            ratio += f" | {tp:.2f}" + (f" (<= {tpot})" if tpot else "")
        else:
            ratio = " | "
        out.append(f"| {w} | {rate:g} | {system} | {r['p50_e2el_ms'] / 1e3:.2f} | "
                   f"{r['p95_e2el_ms'] / 1e3:.2f} | {r['p50_ttft_ms']:.0f} | "
                   f"{r['p50_tpot_ms']:.0f} | {r['output_throughput']:.1f} | {ratio} |")
    return out


@click.command()
@click.option("--zoo", default=None)
@click.option("--rates", default="1,2", show_default=True)
@click.option("--prompts", default=60, show_default=True)
@click.option("--workloads", default=",".join(WORKLOADS), show_default=True)
@click.option("--out", default="results/bench_serving.json", show_default=True)
def main(zoo, rates, prompts, workloads, out):
    from blockllm.zoo.store import Zoo
    rates_ = [float(r) for r in rates.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tokenizer"
        Zoo(zoo).tokenizer("smollm2").save_pretrained(str(tok))
        rows = []
        for w in tqdm(workloads.split(","), desc="workloads"):
            rows += run_workload(w, rates_, prompts, zoo, tok, Path(tmp))
    lines = table(rows)
    for r in rows:
        if "warm_rerun" in r:
            first, warm = r["p95_e2el_ms"], r["warm_rerun"]["p95_e2el_ms"]
            lines.append(f"\n{r['system']} one-model at {r['rate']:g} req/s: first run on a "
                         f"fresh server p95 {first / 1e3:.2f} s, warm rerun "
                         f"{warm / 1e3:.2f} s ({first / warm:.2f}x)")
        if "calls_per_token" in r:
            lines.append(f"blockllm {r['workload']} at {r['rate']:g} req/s: "
                         f"{r['calls_per_token']:.2f} block calls per generated token")
    text = "\n".join(lines)
    print(text)
    Path(out).write_text(json.dumps(rows, indent=1))
    Path(out).with_suffix(".md").write_text(
        "# blockllm vs vLLM (`python -m benchmarks.serving`)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
