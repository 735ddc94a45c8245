"""Batch-1 decode against the memory-bandwidth roofline, and GPU utilization at saturation
(issue 15's GPU checks), with CUDA graphs on and off:

    python -m experiments.gpu_decode --out results/gpu          # on the lent H100/H200

Dummy weights of a real shape (default Llama-2-7B, float16; no download), one model in a zoo
on /dev/shm, the serving engine in this process (the GPU image lacks the server's packages):
- roofline: bytes of weights one token reads (every block but the embedding table, of which
  one row) / this device's measured read bandwidth (a sum over 2 GiB);
- batch 1: TPOT of one request (a 32-token prompt, --new-tokens greedy tokens), per mode:
  decode steps as CUDA graphs or eager, with the Triton kernels or torch ops;
  (one engine for all modes: the batch limits measured at its warm-up under the first mode
  hold for every mode, so each runs the same schedule; greedy tokens compared across modes);
- transformers generate() on the same weights, the correctness reference as a speed peer;
- saturation: --saturate requests at once; tokens/s, TPOT p50 and NVML utilization (mean
  of samples every 0.1 s while they run).
vLLM is not on the GPU image: this run has no vLLM row (benchmarks/serving.py has it on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import click
import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def read_bandwidth(device: str, gib: float = 2.0, reps: int = 20,
                   dtype: torch.dtype = torch.float16) -> dict[str, float]:
    """Bytes per second moved over `gib` GiB of `dtype` (float32 on a CPU, whose float16 sum
    is not memory-bound), median of `reps`: `sum` reads it once; `copy` reads and writes it
    (both counted). The roofline takes the higher: the stricter bound."""
    x = torch.ones(int(gib * (1 << 30)) // dtype.itemsize, dtype=dtype, device=device)
    y = torch.empty_like(x)
    nbytes = x.numel() * x.element_size()
    out = {}
    for name, fn, moved in (("sum", x.sum, nbytes), ("copy", lambda: y.copy_(x), 2 * nbytes)):
        times = []
        for i in range(reps + 3):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            if i >= 3:
                times.append(time.perf_counter() - t)
        out[name] = moved / statistics.median(times)
    del x, y
    return out


def _zoo(path: Path, preset: str, dtype: torch.dtype, device: str):
    """A zoo of one dummy model "m" (weights drawn on `device`, fast on a GPU), and its
    source (tensors on `device`)."""
    from blockllm.loaders.dummy import load_dummy
    from blockllm.zoo.ingest import add_source
    from blockllm.zoo.store import Zoo
    src = load_dummy(preset, 0, dtype, device)
    zoo = Zoo(path)
    if "m" not in zoo.models():
        add_source(zoo, dataclasses.replace(src, tensors={k: v.cpu() for k, v in
                                                          src.tensors.items()}), "m")
    return zoo, src


def _read_bytes(src) -> int:
    """Bytes of weights one decoded token reads: all but the embedding table (one row of it;
    a tied model's table is read whole as its head)."""
    total = sum(t.numel() * t.element_size() for t in src.tensors.values())
    if src.config.tie_word_embeddings:
        return total
    emb = src.tensors["model.embed_tokens.weight"]
    return total - emb.numel() * emb.element_size() + emb[0].numel() * emb.element_size()


def _run(eng, prompts: list[list[int]], n: int) -> list:
    """The requests, run to their length; a block call that failed (the engine ends its
    requests with the reason, and serves on) is raised here with that reason."""
    reqs = [eng.submit("m", p, max_tokens=n, stop_ids=frozenset()) for p in prompts]
    while eng.has_work():
        eng.step()
    bad = [r.finish_reason for r in reqs if r.finish_reason != "length"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(reqs)} requests failed: {bad[0]}")
    return reqs


def _tpots(req) -> list[float]:
    t = req.token_times
    return [b - a for a, b in zip(t, t[1:])]


def _graphs(eng) -> list:
    return [w.graphs for h in eng.hosts for w in h.workers.values() if w.graphs is not None]


def engine_row(eng, mode: str, n: int, saturate: int, reps: int = 3) -> dict:
    """Batch-1 TPOT and a saturation run on `eng` (built with cuda_graphs=`mode`)."""
    from experiments.harness import Sampler
    prompt = list(range(3, 35))
    _run(eng, [prompt], n)  # unmeasured: captures the batch-1 graphs, warms the allocator
    calls0, one = eng.counters["block_calls"], []
    for _ in range(reps):
        req = _run(eng, [prompt], n)[0]
        one += _tpots(req)
    calls = (eng.counters["block_calls"] - calls0) / (reps * n)
    prompts = [[3 + (i * 7 + j) % 1000 for j in range(64)] for i in range(saturate)]
    _run(eng, prompts, n)  # unmeasured: the saturation run's buckets
    sampler = Sampler(os.getpid())
    sampler.start()
    t0 = time.perf_counter()
    reqs = _run(eng, prompts, n)
    wall = time.perf_counter() - t0
    util = [s["util"] for s in sampler.stop() if s.get("util") is not None]
    return {
        "mode": mode,
        "batch1_tpot_ms_p50": 1e3 * statistics.median(one),
        "batch1_tpot_ms_mean": 1e3 * statistics.fmean(one),
        "batch1_block_calls_per_token": calls,
        "batch1_tokens": list(req.output),  # greedy: the modes' agreement is reported
        "saturation": {"requests": saturate, "new_tokens": n, "wall_s": wall,
                       "tokens_per_s": saturate * n / wall,
                       "tpot_ms_p50": 1e3 * statistics.median(
                           [x for r in reqs for x in _tpots(r)]),
                       "gpu_util_mean": statistics.fmean(util) if util else None,
                       "util_samples": len(util), "sampler": sampler.kind},
        "graph_captures": sum(g.captures for g in _graphs(eng)),
        "graph_replays": sum(g.replays for g in _graphs(eng)),
        "block_failures": eng.counters["block_failures"],
    }


def hf_tpot_ms(src, dtype: torch.dtype, device: str, n: int) -> float:
    """transformers generate() at batch 1: (time of n tokens - time of 1) / (n - 1)."""
    from baselines.hf_reference import hf_model
    model = hf_model(src, dtype, device)
    ids = torch.tensor([list(range(3, 35))], device=device)

    def timed(k: int) -> float:
        _sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=k, min_new_tokens=k, do_sample=False)
        _sync(device)
        return time.perf_counter() - t
    timed(2)
    ms = 1e3 * (statistics.median(timed(n) for _ in range(3)) - timed(1)) / (n - 1)
    del model
    return ms


@click.command()
@click.option("--out", default="results/gpu", type=click.Path(file_okay=False))
@click.option("--preset", default="llama-2-7b", show_default=True)
@click.option("--dtype", default="float16", show_default=True)
@click.option("--device", default="cuda", help="cuda (the check); cpu only to smoke-test it.")
@click.option("--zoo", "zoo_dir", default="/dev/shm/blockllm-decode-zoo", type=click.Path())
@click.option("--new-tokens", default=128, show_default=True)
@click.option("--saturate", default=64, show_default=True, help="Requests at once.")
@click.option("--modes", default="graphs+triton,graphs+torch,eager+triton,eager+torch",
              show_default=True, help="Decode steps as CUDA graphs (graphs), eager, or "
              "uncaptured (a CPU smoke test); '+torch': BLOCKLLM_TRITON=0.")
@click.option("--hf/--no-hf", default=True, help="Time transformers generate() too.")
@click.option("--name", default="gpu_decode", show_default=True, help="Output file stem.")
@click.option("--bandwidth-gib", default=2.0, show_default=True,
              help="GiB read to measure the device's bandwidth.")
def main(out, preset, dtype, device, zoo_dir, new_tokens, saturate, modes, hf, name,
         bandwidth_gib):
    from blockllm.models.gpu_kernels import gpu_kernels
    from blockllm.runtime.config import EngineConfig
    from blockllm.runtime.engine import Engine
    from blockllm.runtime.graphs import DecodeGraphs
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.UsageError("no CUDA device here: run this on a GPU machine")
    dt = getattr(torch, dtype)
    t0 = time.perf_counter()
    bws = read_bandwidth(device, bandwidth_gib)
    bw = max(bws.values())
    zoo, src = _zoo(Path(zoo_dir), preset, dt, device)
    click.echo(f"zoo ready {time.perf_counter() - t0:.0f}s", err=True)
    nbytes = _read_bytes(src)
    report = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "preset": preset, "dtype": dtype,
              "bandwidth_GBps": {k: v / 1e9 for k, v in bws.items()},
              "bytes_read_per_token": nbytes,
              "roofline_tpot_ms": 1e3 * nbytes / bw, "engine": []}
    cfg = EngineConfig(device=device, dtype=dtype, memory_budget=2 * nbytes + (1 << 30),
                       kv_budget=8 << 30)
    eng = Engine(zoo, ["m"], cfg)
    eng.warm_up()
    for mode in modes.split(","):
        # the same weights and pools (one 13 GB load), kernels and graphs swapped
        graphs, kernels = mode.split("+") if "+" in mode else (mode, "triton")
        os.environ["BLOCKLLM_TRITON"] = "1" if kernels == "triton" else "0"
        gpu_kernels.cache_clear()
        for h in eng.hosts:  # a worker rebuilt after a failure takes the mode's graphs too
            h.graphs = {"graphs": "auto", "uncaptured": "uncaptured"}.get(graphs, "off")
        for w in (w for h in eng.hosts for w in h.workers.values() if w.kind == "decoder"):
            w.graphs = DecodeGraphs(w.module, w.device, graphs == "graphs") \
                if graphs in ("graphs", "uncaptured") else None
        try:
            row = engine_row(eng, mode, new_tokens, saturate)
        except RuntimeError as e:  # this mode's calls failed: say why, measure the others
            report["engine"].append({"mode": mode, "error": str(e)})
            click.echo(f"{mode}: {e}", err=True)
            _write(report, out, name)
            continue
        row["kernels"] = "triton" if gpu_kernels(dt) is not None else "torch"
        row["x_roofline"] = row["batch1_tpot_ms_p50"] / report["roofline_tpot_ms"]
        # fp16 sums in another order may flip a near-tie: how long the greedy tokens agree
        first = next((r for r in report["engine"] if "error" not in r), row)
        row["tokens_agree_with_first_mode"] = _agree(first["batch1_tokens"], row["batch1_tokens"])
        report["engine"].append(row)
        click.echo(json.dumps({k: v for k, v in row.items() if k != "batch1_tokens"}),
                   err=True)
        _write(report, out, name)  # after each mode: a run cut short keeps what it measured
    eng.close()
    del eng
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    if hf:
        report["transformers_tpot_ms"] = hf_tpot_ms(src, dt, device, new_tokens)
        click.echo(f"transformers {report['transformers_tpot_ms']:.2f} ms", err=True)
    report["wall_s"] = time.perf_counter() - t0
    _write(report, out, name)
    click.echo(json.dumps({**report, "engine": [{k: v for k, v in r.items()
                                                  if k != "batch1_tokens"}
                                                 for r in report["engine"]]}, indent=1))


def _agree(a: list[int], b: list[int]) -> int:
    """The length of the common prefix of two token lists."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _write(report: dict, out: str, name: str) -> None:
    outd = Path(out)
    outd.mkdir(parents=True, exist_ok=True)
    (outd / f"{name}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
