"""Experiment 7 (issue 7): locality-aware placement vs round-robin and random, simulated on the
paper's cluster (12 A100-80GB in 4 servers: 2, 2, 4, 4 GPUs) and a larger one.

The served models are 7B-shape variants (Llama-2-7B layout, fp16): a base and partial
fine-tunes that retrain the top 4 of 32 layers, one block per layer, so the bottom 28 layers,
embedding and head are shared. Block latency curves are a roofline of an A100 (weights read
once per call, compute per token), not measurements: no A100 was available. One seeded trace
(Poisson arrivals, Zipf popularity) is replayed on every placement with the same routing, batch
limits and pick rule (blockllm.runtime.placement, blockllm.sim.cluster). Per-block load, the
placement's input, is history: each block's busy time in a first run of a history trace (seed
7) under round-robin placement. "selected" is the placement chosen by `placement.select` from
replaying that history on each candidate: the least data moved among those within 5% of the
best p95. Every placement is then measured on a new trace (seed 8) from the same workload.

Candidates: round-robin, random, locality-aware with the default balance slack (each server
takes up to 110% of its compute's share of the load) and with a looser one (140%: more of
each chain stays on one server). The whole comparison runs at two costs of a hop between
servers (`Scale.hop_costs`: 100 us, an RDMA-class RPC, and 1 ms, an RPC through a
general-purpose stack such as Ray's object store), since which placement wins depends on it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from blockllm.loaders.dummy import preset_config
from blockllm.runtime.placement import (
    PAPER_CLUSTER,
    cluster_of,
    locality_aware,
    random_placement,
    round_robin,
    select,
    workload_from_chains,
)
from blockllm.sim.cluster import SimRequest, curve_time, roofline_curve, simulate
from experiments.workloads import WorkloadConfig, inter_arrivals, popularity


@dataclass(frozen=True)
class Scale:
    clusters: tuple[tuple[str, tuple[int, ...]], ...]  # (name, GPUs per server)
    variants: int  # partial fine-tunes per cluster GPU count of 12 (scaled with the cluster)
    n_requests: int
    rate: float  # requests/s on the 12-GPU cluster (scaled with the cluster)
    prompt_tokens: tuple[int, int]
    max_tokens: tuple[int, int]
    hop_costs: tuple[float, ...] = (100e-6, 1e-3)  # seconds per hop between servers


CANDIDATES = {"locality": locality_aware, "locality-0.4": partial(locality_aware, slack=0.4),
              "round_robin": round_robin, "random": random_placement}

SCALES = {
    "toy": Scale((("paper-12xA100", PAPER_CLUSTER),), 4, 40, 20.0, (16, 64), (2, 4)),
    "cpu-small": Scale((("paper-12xA100", PAPER_CLUSTER), ("16x4xA100", (4,) * 16)), 24, 400,
                       40.0, (64, 512), (16, 64)),
    "gpu-full": Scale((("paper-12xA100", PAPER_CLUSTER), ("16x4xA100", (4,) * 16),
                       ("128x4xA100", (4,) * 128)), 24, 2000, 40.0, (64, 512), (16, 128)),
}


def _blocks(n_variants: int):
    cfg = preset_config("llama-2-7b")
    h, inter, v, n = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size,
                      cfg.num_hidden_layers)
    kv = cfg.num_key_value_heads * cfg.head_dim
    layer_params = h * (2 * h + 2 * kv) + 3 * h * inter
    sizes = {"embed": 2 * v * h, "head": 2 * v * h}
    flops = {"embed": 0.0, "head": 2.0 * v * h}
    chains = {}
    for k in range(n_variants + 1):
        own = k > 0
        chain = ["embed"]
        for i in range(n):
            b = f"v{k}.L{i}" if own and i >= n - 4 else f"base.L{i}"
            sizes[b], flops[b] = 2 * layer_params, 2.0 * layer_params
            chain.append(b)
        chains[f"m{k}"] = chain + ["head"]
    curves = {b: roofline_curve(sizes[b], flops[b]) for b in sizes}
    return chains, sizes, curves, 2 * h  # fp16 hidden state per token


def _trace(s: Scale, factor: float, chains: dict, seed: int) -> list[SimRequest]:
    cfg = WorkloadConfig(n_requests=round(s.n_requests * factor), rate=s.rate * factor,
                         popularity="zipf", seed=seed)
    rng = np.random.default_rng(cfg.seed)
    t = np.cumsum(inter_arrivals(cfg, rng))
    names = popularity(cfg, sorted(chains), rng)
    prompt = rng.integers(*s.prompt_tokens, endpoint=True, size=cfg.n_requests)
    new = rng.integers(*s.max_tokens, endpoint=True, size=cfg.n_requests)
    return [SimRequest(i, names[i], float(t[i]), int(prompt[i]), int(new[i]))
            for i in range(cfg.n_requests)]


def _cluster_run(s: Scale, shape: tuple[int, ...], inter_hop_s: float = 100e-6):
    """Models, the history trace and the workload derived from it, and the evaluation trace,
    for one cluster (scaled with its GPU count); shared by every placement compared on it."""
    factor = sum(shape) / 12
    chains, sizes, curves, hop = _blocks(round(s.variants * factor))
    reqs = _trace(s, factor, chains, seed=7)
    span = max(r.t for r in reqs) or 1.0
    tokens = Counter()
    for r in reqs:
        tokens[r.model] += r.max_tokens
    rates = {m: tokens[m] / span for m in chains}  # passes per second
    cluster = cluster_of(shape, inter_hop_s=inter_hop_s)
    # per-block load from history: busy time in a first run of the trace under round-robin
    passes = workload_from_chains(chains, rates, sizes, dict.fromkeys(sizes, 1.0), hop).demand
    guess = workload_from_chains(chains, rates, sizes,
                                 {b: curve_time(c, 1) for b, c in curves.items()}, hop)
    pilot = simulate(reqs, chains, curves, round_robin(guess, cluster), cluster, hop)
    w = workload_from_chains(chains, rates, sizes, {
        b: pilot.block_busy_s.get(b, 0.0) / pilot.makespan / max(1e-9, passes.get(b, 0.0))
        for b in sizes}, hop)
    return chains, curves, hop, reqs, w, cluster, _trace(s, factor, chains, seed=8)


def run(scale: str, out: Path, zoo=None, models=None) -> list[Path]:
    s = SCALES[scale]
    rows = []
    runs = [(name, shape, h) for name, shape in s.clusters for h in s.hop_costs]
    for name, shape, hop_s in tqdm(runs, desc=f"placement[{scale}]"):
        chains, curves, hop, history, w, cluster, reqs = _cluster_run(s, shape, hop_s)
        places = {pname: fn(w, cluster) for pname, fn in CANDIDATES.items()}
        scores = {}
        for pname, place in places.items():  # history replayed on each candidate
            h = simulate(history, chains, curves, place, cluster, hop)
            scores[pname] = (float(np.percentile(list(h.e2e.values()), 95)), h.transfer_s)
        chosen = select(scores)
        by_name = {}
        for pname, place in places.items():
            r = simulate(reqs, chains, curves, place, cluster, hop)
            e2e, ttft = np.array(list(r.e2e.values())), np.array(list(r.ttft.values()))
            rows.append({"cluster": name, "gpus": len(cluster.devices), "placement": pname,
                         "inter_hop_us": round(hop_s * 1e6),
                         "network_hops_per_request": r.network_hops / len(reqs),
                         "chosen": None,
                         "models": len(chains), "requests": len(reqs),
                         "replicas": sum(len(v) for v in place.values()), "blocks": len(place),
                         "transfers_per_request": r.transfers / len(reqs),
                         "transfer_ms_per_request": 1e3 * r.transfer_s / len(reqs),
                         "e2e_p50": float(np.percentile(e2e, 50)),
                         "e2e_p95": float(np.percentile(e2e, 95)),
                         "ttft_p95": float(np.percentile(ttft, 95)),
                         "util_mean": float(np.mean(r.busy_s)) / r.makespan,
                         "util_max": float(np.max(r.busy_s)) / r.makespan})
            by_name[pname] = rows[-1]
        rows.append({**by_name[chosen], "placement": "selected", "chosen": chosen})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"placement-{scale}.json"
    path.write_text(json.dumps({"experiment": "placement", "scale": scale,
                                "latency_model": "A100 roofline (not measured)",
                                "rows": rows}, indent=1))
    return [path]
