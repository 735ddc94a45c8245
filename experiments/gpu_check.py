"""GPU checks of issue 7 on a machine with a CUDA device (the lent H100/H200; not part of CI).

    python -m experiments.gpu_check --out results/gpu

Dummy weights of real shapes (no download; the 98 MB GGUF does not travel), the engine in this
process (the GPU image lacks the server's packages; experiments/inproc.py):
- curves: per-block latency curves on this GPU, as the engine profiles them, for SmolLM2-135M
  (bf16) and Llama-2-7B (fp16) block shapes;
- validation: a zoo of SmolLM2-135M-shaped variants; seeded traces at several rates replayed
  on the real engine on cuda (warm: after one unmeasured replay of the same trace) and in the
  simulator fed with curves and the engine's overhead per call measured here: p50/p95;
- speculation: one trace under a weight budget that forces loads, speculative loads on and
  off, run alternately;
- utilization: NVML GPU utilization sampled through every replay.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np


def _curves_of(preset: str, dtype: str, device: str) -> dict:
    """Latency curves of the embedding, one decoder layer and the head of `preset`'s shape."""
    import torch

    from blockllm.loaders.dummy import PRESETS, dummy_tensors
    from blockllm.loaders.source import ModelSource
    from blockllm.models.config import LlamaConfig
    from blockllm.runtime.workers import BlockWorker, profile_latency
    from blockllm.zoo.partition import partition
    cfg = LlamaConfig.from_hf({"model_type": "llama", **PRESETS[preset], "num_hidden_layers": 1})
    dt = getattr(torch, dtype)
    src = ModelSource(cfg, dummy_tensors(cfg, 0, dt), f"dummy:{preset}")
    blocks, _ = partition(src)
    out = {}
    for b in blocks:
        w = BlockWorker(cfg, b, torch.device(device), dt)
        profile_latency(w)  # warm up kernels and the allocator
        out[b.kind] = profile_latency(w, sizes=(1, 8, 32, 128, 512), repeats=5)
        del w
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def _zoo(root: Path, n_models: int, top: int) -> tuple[str, list[str]]:
    import torch

    from blockllm.loaders import load_source
    from blockllm.zoo.ingest import add_source
    from blockllm.zoo.store import Zoo
    from experiments.synthetic import variant
    zoo = Zoo(root)
    base = load_source("dummy:smollm2-135m", torch.bfloat16)
    names = ["base"] + [f"v{i}" for i in range(1, n_models)]
    for i, name in enumerate(names):
        if name not in zoo.models():
            add_source(zoo, base if i == 0 else variant(base, "partial", i, top), name)
    return str(root), names


def _trace(models: list[str], rate: float, n: int, seed: int) -> tuple[dict, dict]:
    from experiments.workloads import WorkloadConfig, make_trace
    rng = np.random.default_rng(seed)
    trace = make_trace(WorkloadConfig(n_requests=n, rate=rate, max_tokens=(16, 64),
                                      popularity="uniform", seed=seed), models, ["x"])
    prompts = {r["i"]: rng.integers(3, 49152, int(rng.integers(16, 128))).tolist()
               for r in trace["requests"]}
    return trace, prompts


def _q(xs) -> dict:
    return {"p50": float(np.percentile(xs, 50)), "p95": float(np.percentile(xs, 95))}


def _replay(zoo_dir, models, cfg, trace, prompts, sampler_pid, warm: bool = False
            ) -> tuple[list[dict], dict, dict]:
    """One replay on a fresh engine (`warm`: after a first, unmeasured replay of the trace)."""
    from blockllm.runtime.engine import Engine
    from blockllm.zoo.store import Zoo
    from experiments.harness import Sampler
    from experiments.inproc import counters_since, replay_engine
    eng = Engine(Zoo(zoo_dir), models, cfg)
    if warm:
        replay_engine(eng, trace, prompts)
    before = dict(eng.counters)
    s = Sampler(sampler_pid)
    s.start()
    recs = replay_engine(eng, trace, prompts)
    samples = s.stop()
    eng.close()
    util = [x["util"] for x in samples if x.get("util") is not None]
    return recs, counters_since(eng, before), {
        "gpu_util_mean": float(np.mean(util)) if util else None, "sampler": s.kind}


@click.command()
@click.option("--out", default="results/gpu", type=click.Path(file_okay=False))
@click.option("--zoo", "zoo_dir", default="/tmp/blockllm-gpu-zoo", type=click.Path())
@click.option("--rates", default="2,8,32", help="Request rates of the validation traces.")
@click.option("--requests", "n_req", default=64, type=int)
@click.option("--device", default="cuda", help="cuda (the check); cpu only to smoke-test it.")
@click.option("--presets", default="smollm2-135m:bfloat16,llama-2-7b:float16",
              help="Block shapes to profile, PRESET:DTYPE, comma-separated.")
@click.option("--dtype", default="bfloat16", help="The engine's dtype in the replays.")
@click.option("--parts", default="curves,validation,speculation", help="Which checks to run.")
@click.option("--name", default="gpu_check", show_default=True,
              help="Output file stem (paper_figures.sim_validation draws gpu_validation-*).")
def main(out, zoo_dir, rates, n_req, device, presets, dtype, parts, name):
    import os

    import torch

    from blockllm.runtime.config import EngineConfig
    from blockllm.sim.cluster import SimRequest
    from blockllm.zoo.store import Zoo
    from experiments.configs.sim_validation import (
        measure_engine,
        overhead_per_call,
        simulate_one_device,
    )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.UsageError("no CUDA device here: run this on a GPU machine")
    outd = Path(out)
    outd.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    report = {"device": gpu, "torch": torch.__version__, "dtype": dtype,
              "curves": {}, "validation": [], "speculation": []}
    t0 = time.perf_counter()
    parts = set(parts.split(","))
    for spec in filter(None, presets.split(",") if "curves" in parts else []):
        preset, curve_dtype = spec.split(":")  # not `dtype`: that is the replays' dtype
        report["curves"][preset] = {"dtype": curve_dtype,
                                    **_curves_of(preset, curve_dtype, device)}
    click.echo(f"curves done {time.perf_counter() - t0:.0f}s", err=True)
    zoo, models = _zoo(Path(zoo_dir), 6, 8)
    base = EngineConfig(device=device, dtype=dtype, memory_budget=8 << 30,
                        kv_budget=4 << 30)
    if "validation" in parts:  # loads and profiles every block: only where it is used
        eng, chains, curves, _, per_seq = measure_engine(zoo, models, base)
    for rate in [float(r) for r in rates.split(",")] if "validation" in parts else []:
        trace, prompts = _trace(models, rate, n_req, seed=11)
        reqs = [SimRequest(r["i"], r["model"], r["t"], len(prompts[r["i"]]), r["max_tokens"])
                for r in trace["requests"]]
        overhead = overhead_per_call(eng, reqs[:16], lambda r, p=prompts: p[r.i])
        recs, counters, util = _replay(zoo, models, base, trace, prompts, os.getpid(),
                                       warm=True)
        real = [r["e2e"] for r in recs]
        sim = list(simulate_one_device(reqs, chains, curves, overhead, {}, per_seq).values())
        row = {"rate": rate, "real": _q(real), "sim": _q(sim), "call_overhead_s": overhead,
               "steps": counters["steps"], **util}
        row["error_pct"] = {k: 100 * (row["sim"][k] - row["real"][k]) / row["real"][k]
                            for k in ("p50", "p95")}
        report["validation"].append(row)
        click.echo(json.dumps(row), err=True)
    if "validation" in parts:
        eng.close()
    # speculation: weights budget below the zoo's unique bytes -> loads; on/off alternated
    z = Zoo(zoo)
    unique = sum(z.block_info(b).nbytes for b in {e.block for m in models for e in z.chain(m)})
    tight = replace(base, memory_budget=int(unique * 0.6))
    trace, prompts = _trace(models, 8.0, n_req, seed=12)
    for rep in range(2 if "speculation" in parts else 0):
        for on in (True, False):
            recs, c, util = _replay(zoo, models, replace(tight, speculate=on), trace, prompts,
                                    os.getpid())
            row = {"speculate": on, "repeat": rep, "e2e": _q([r["e2e"] for r in recs]),
                   "ttft": _q([r["ttft"] for r in recs]), "budget": tight.memory_budget,
                   **{k: c[k] for k in ("cold_loads", "load_seconds", "prefetches",
                                        "prefetch_hits", "prefetch_wasted", "steps")}, **util}
            report["speculation"].append(row)
            click.echo(json.dumps(row), err=True)
    report["wall_s"] = time.perf_counter() - t0
    (outd / f"{name}.json").write_text(json.dumps(report, indent=1))
    click.echo(f"wrote {outd / name}.json in {report['wall_s']:.0f}s", err=True)


if __name__ == "__main__":
    main()
