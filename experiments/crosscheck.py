"""Our harness against an independent client: vLLM's own `vllm bench serve`.

For each server (blockllm, and vLLM through the baseline's router) the same requests are sent
twice, once by each client: `vllm bench serve` replays our trace's prompts in order
(`--dataset-name custom --disable-shuffle --skip-chat-template`, `--ignore-eos`) with its own
Poisson arrivals, and saves when it sent each one; our harness then replays the same prompts at
those very send times. Both report p50/p95 TTFT, TPOT and end-to-end; they should agree.

    python -m experiments.crosscheck [--models smollm2] [--rate 1] [--requests 40]
        [--output-len 32] [--out results/crosscheck.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from pathlib import Path

import click
import numpy as np

from baselines.vllm_deploy import peers_python
from experiments.harness import replay
from experiments.server_proc import server_process
from experiments.workloads import WorkloadConfig, load_prompts, make_trace, prompt_set

SERVERS = {
    "blockllm": ["-m", "blockllm.cli", "serve"],
    "vllm": ["-m", "baselines.vllm_server", "--mode", "per-model"],
}
METRICS = ("ttft", "tpot", "e2e")


def _pct(values, q) -> float:
    return float(np.percentile([v for v in values if v is not None], q))


def vllm_bench(url: str, model: str, tokenizer: Path, trace: dict, rate: float, out: Path
               ) -> dict:
    """Run `vllm bench serve` on the trace's prompts; its per-request results (seconds)."""
    data = out / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "output_tokens": r["max_tokens"]})
                            + "\n" for r in trace["requests"]))
    cmd = [str(peers_python().parent / "vllm"), "bench", "serve", "--backend", "openai",
           "--base-url", url, "--model", model, "--tokenizer", str(tokenizer),
           "--dataset-name", "custom", "--dataset-path", str(data), "--disable-shuffle",
           "--skip-chat-template", "--custom-output-len", "-1",
           "--num-prompts", str(len(trace["requests"])),
           "--request-rate", str(rate), "--seed", "0", "--ignore-eos", "--temperature", "0",
           "--save-result", "--save-detailed", "--result-dir", str(out),
           "--result-filename", "bench.json"]
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed: {p.stderr[-2000:]}")
    r = json.loads((out / "bench.json").read_text())
    tpot = [(lat - ttft) / (n - 1) if n > 1 else None
            for lat, ttft, n in zip(r["latencies"], r["ttfts"], r["output_lens"])]
    return {"ttft": r["ttfts"], "tpot": tpot, "e2e": r["latencies"],
            "start_times": r["start_times"], "output_lens": r["output_lens"]}


def crosscheck(server: str, zoo: str | None, model: str, trace: dict, rate: float,
               tokenizer: Path) -> dict:
    argv = [*SERVERS[server], "--models", model, "--memory-budget", "4GiB",
            "--kv-budget", "256MiB"] + (["--zoo", zoo] if zoo else [])
    with server_process(argv, timeout_s=900) as (url, _), \
            tempfile.TemporaryDirectory() as tmp:
        warm = {**trace, "requests": [{**r, "t": 0.5 * i} for i, r in
                                      enumerate(trace["requests"][:4])]}
        asyncio.run(replay(url, warm))  # one-off costs (first shapes) out of both runs
        theirs = vllm_bench(url, model, tokenizer, trace, rate, Path(tmp))
        t0 = min(theirs["start_times"])
        same = {**trace, "requests": [{**r, "t": s - t0} for r, s in
                                      zip(trace["requests"], theirs["start_times"])]}
        recs = asyncio.run(replay(url, same))
    ours = {"ttft": [r.ttft for r in recs], "tpot": [r.tpot for r in recs],
            "e2e": [r.e2e for r in recs]}
    assert all(r.status == "ok" for r in recs), [r.status for r in recs if r.status != "ok"]
    rows = []
    for m in METRICS:
        for q in (50, 95):
            a, b = _pct(ours[m], q), _pct(theirs[m], q)
            rows.append({"server": server, "metric": f"{m}_p{q}", "harness_s": a,
                         "vllm_bench_s": b, "diff_pct": 100 * (a - b) / b})
    return {"rows": rows, "tokens_equal": [r.tokens for r in recs] == theirs["output_lens"]}


@click.command()
@click.option("--models", "model", default="smollm2", show_default=True)
@click.option("--zoo", default=None)
@click.option("--rate", default=1.0, show_default=True)
@click.option("--requests", default=40, show_default=True)
@click.option("--output-len", default=32, show_default=True)
@click.option("--out", default="results/crosscheck.json", show_default=True)
def main(model, zoo, rate, requests, output_len, out):
    from blockllm.zoo.store import Zoo
    tok_dir = Path(tempfile.mkdtemp(prefix="crosscheck-tokenizer-"))
    Zoo(zoo).tokenizer(model).save_pretrained(str(tok_dir))  # vllm bench counts tokens
    prompts = load_prompts(prompt_set(Path(out).parent / "runs" / "traces" / "prompts.json"))
    cfg = WorkloadConfig(n_requests=requests, rate=rate, max_tokens=(output_len, output_len),
                         seed=0)
    trace = make_trace(cfg, [model], prompts)
    result = {"config": {"model": model, "rate": rate, "requests": requests,
                         "output_len": output_len}, "servers": {}}
    for server in SERVERS:
        result["servers"][server] = crosscheck(server, zoo, model, trace, rate, tok_dir)
        for r in result["servers"][server]["rows"]:
            click.echo(f"{server:9s} {r['metric']:9s} harness {r['harness_s']:8.3f} s  "
                       f"vllm bench {r['vllm_bench_s']:8.3f} s  {r['diff_pct']:+6.1f}%")
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
