"""Shared-block serving vs the same engine with sharing off, same workload, same memory budget.

    python -m benchmarks.sharing [--zoo DIR] [--budget 1.5GiB] [--requests 36] [--tokens 16]

A seeded mixed workload over every model in the zoo (uniform popularity, prompts from the
variants' tasks), all submitted at once (saturation). Both engines run in this process, one after
the other, with the same memory and KV budgets. Reports tokens/s and per-request latency
percentiles, and writes results/sharing.json.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from blockllm.units import parse_bytes
from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.evaluation.tasks import TASKS
from blockllm.zoo.store import Zoo


def workload(models: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    tasks = sorted(TASKS)
    out = []
    for i in range(n):
        prompt, _ = TASKS[tasks[i % len(tasks)]].examples(1, seed * 1000 + i)[0]
        out.append((rng.choice(models), prompt))
    return out


def run(zoo: Zoo, models, jobs, tokens: int, cfg: EngineConfig, label: str) -> dict:
    eng = Engine(zoo, models, cfg)
    toks = {m: zoo.tokenizer(m) for m in models}
    start = time.perf_counter()
    reqs = [eng.submit(m, toks[m].encode(p), max_tokens=tokens, stop_ids=frozenset())
            for m, p in jobs]
    bar = tqdm(total=len(reqs) * tokens, desc=label, unit="tok")
    done = 0
    while eng.has_work():
        eng.step()
        now = sum(len(r.output) for r in reqs)
        bar.update(now - done)
        done = now
    bar.close()
    wall = time.perf_counter() - start
    e2e = np.array([r.token_times[-1] - r.arrival for r in reqs])
    ttft = np.array([r.token_times[0] - r.arrival for r in reqs])
    return {"label": label, "share_blocks": cfg.share_blocks, "wall_s": wall,
            "tokens": done, "tokens_per_s": done / wall,
            "e2e_p50_s": float(np.percentile(e2e, 50)), "e2e_p95_s": float(np.percentile(e2e, 95)),
            "ttft_p50_s": float(np.percentile(ttft, 50)),
            "ttft_p95_s": float(np.percentile(ttft, 95)),
            "block_loads": sum(m.loads for m in eng.weights.memory),
            "evictions": sum(m.evictions for m in eng.weights.memory),
            "steps": eng.counters["steps"], "preemptions": eng.counters["preemptions"],
            "kv_pools": len(eng.sched.kv.tables)}


@click.command()
@click.option("--zoo", "zoo_dir", default=None)
@click.option("--budget", default="1.5GiB", show_default=True, help="Weight memory budget.")
@click.option("--kv-budget", default="256MiB", show_default=True)
@click.option("--requests", "n", default=36, show_default=True)
@click.option("--tokens", default=16, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="results/sharing.json", show_default=True)
def main(zoo_dir, budget, kv_budget, n, tokens, seed, out):
    zoo = Zoo(zoo_dir)
    models = zoo.models()
    jobs = workload(models, n, seed)
    rows = []
    warm = EngineConfig(memory_budget=parse_bytes(budget), kv_budget=parse_bytes(kv_budget))
    run(zoo, models, [(models[0], jobs[0][1])], 2, warm, "warm-up")  # imports, setup: untimed
    for share in (True, False):
        cfg = EngineConfig(memory_budget=parse_bytes(budget), kv_budget=parse_bytes(kv_budget),
                           share_blocks=share)
        rows.append(run(zoo, models, jobs, tokens, cfg, "shared" if share else "no-sharing"))
    whole = sum(zoo.block_info(b).nbytes for m in models for e in zoo.chain(m)
                for b in (e.block, e.adapter) if b)
    res = {"command": "python -m benchmarks.sharing", "models": models, "requests": n,
           "tokens": tokens, "seed": seed, "memory_budget": parse_bytes(budget),
           "models_whole_bytes": whole, "unique_bytes": zoo.stats().unique_bytes, "rows": rows}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=1))
    s, u = rows
    print(f"{'':12s} {'tok/s':>8s} {'p50 e2e':>8s} {'p95 e2e':>8s} {'p95 ttft':>8s} loads evict")
    for r in rows:
        print(f"{r['label']:12s} {r['tokens_per_s']:8.2f} {r['e2e_p50_s']:8.2f} "
              f"{r['e2e_p95_s']:8.2f} {r['ttft_p95_s']:8.2f} {r['block_loads']:5d} "
              f"{r['evictions']:5d}")
    print(f"throughput {s['tokens_per_s'] / u['tokens_per_s']:.2f}x, p95 latency "
          f"{(1 - s['e2e_p95_s'] / u['e2e_p95_s']) * 100:.1f}% lower with sharing")


if __name__ == "__main__":
    main()
