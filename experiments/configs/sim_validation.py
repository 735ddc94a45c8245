"""The simulator checked against real runs: the traces of experiment 1 replayed in
blockllm.sim.cluster on one device, with latency curves measured here on the zoo's own blocks
(workers.profile_latency, as the engine profiles them), the engine's own time per block call
(measured from its counters on a sample of the trace) and each block's cold start (timed on
the engine's own load path), against what the real blockllm server measured on the same
traces over HTTP, and against the same requests replayed on the engine in this process
(experiments/inproc.py: the engine without the server), which says how much of the gap is the
server's. Run after `latency_vs_rate` at the same scale.

The simulated device holds every block: it models a budget that fits them all, not blocks
read on demand under a tight one (experiment 1's smaller budget), where the simulator is
expected to be fast against the real server; the rows say which budget each run had.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from blockllm.runtime.placement import Cluster, Device
from blockllm.sim.cluster import SimRequest, simulate
from experiments.summary import load

SCALES = {"toy": None, "cpu-small": None, "gpu-full": None}  # follows latency_vs_rate's scale


def measure_engine(zoo_dir: str | None, models: list[str], cfg=None):
    """An engine with every block loaded (nothing evicted), the keys of each model's chain
    (shared blocks share a key), a latency curve per key (profiled once per block shape on
    the engine's device), each key's cold start (read, hash check, build) and what each extra
    sequence of a batch costs it (workers.sequence_cost)."""
    from dataclasses import replace

    from blockllm.runtime.config import EngineConfig
    from blockllm.runtime.engine import Engine
    from blockllm.runtime.workers import profile_latency, sequence_cost
    from blockllm.zoo.store import Zoo
    zoo = Zoo(zoo_dir)
    cfg = replace(cfg or EngineConfig(), memory_budget=1 << 40, speculate=False)
    eng = Engine(zoo, models, cfg)
    chains, curves, by_shape, cold, per_seq = {}, {}, {}, {}, {}
    for m in models:
        keys = []
        for e in eng.chains[m]:
            key = eng.key(m, e)
            keys.append(str(key))
            if str(key) not in curves:
                info = eng.info[e.block]
                shape = (info.kind, json.dumps(info.signature, sort_keys=True))
                t0 = time.perf_counter()  # the engine's cold path: read, hash, build
                eng.weights.load(key, e, m)
                eng.weights.residency(key).add(key, info.nbytes)
                cold[str(key)] = time.perf_counter() - t0
                if shape not in by_shape:
                    worker = eng.hosts[eng.where[key]].workers[key]
                    profile_latency(worker, repeats=1)  # first calls pay kernel set-up
                    by_shape[shape] = (profile_latency(worker, repeats=3),
                                       sequence_cost(worker))
                curves[str(key)], per_seq[str(key)] = by_shape[shape]
        chains[m] = keys
    return eng, chains, curves, cold, per_seq


def overhead_per_call(eng, reqs: list[SimRequest], toks_of) -> float:
    """The engine's own seconds per block call (admission, picking, batching, sampling), from
    its counters over a warm in-process run of a sample of the trace, all submitted at once.
    The sample runs twice and the second run counts: the first pays one-off set-up (each
    block's batch limit found at its first use, as `blockllm serve` does at start-up), about
    5 s on 2 CPU cores, which spread over the sample's ~120 calls read as 44-59 ms per call
    and made the simulator 5-16x slow (stop 24-26's tables) against 0.15 ms warm."""
    from experiments.inproc import counters_since
    for _ in range(2):
        before = dict(eng.counters)
        for r in reqs:
            eng.submit(r.model, toks_of(r), max_tokens=r.max_tokens, stop_ids=frozenset())
        while eng.has_work():
            eng.step()
    d = counters_since(eng, before)
    return (d["step_seconds"] - d["block_seconds"] - d["load_seconds"]) / max(1, d["steps"])


def simulate_one_device(reqs, chains, curves, overhead: float, cold: dict,
                        seq_cost: dict | None = None) -> dict[int, float]:
    """e2e of each request in the simulator, on one device holding every block."""
    sim = simulate(reqs, chains, curves, {b: (0,) for b in curves},
                   Cluster((Device(0, 1 << 40),)), 0.0, call_overhead_s=overhead,
                   first_use_s=cold, seq_cost_s=seq_cost)
    return sim.e2e


def _budgets(command: list[str]) -> dict:
    """The server's weight and KV budgets, from the command recorded in a run's header."""
    from blockllm.units import parse_bytes
    flags = dict(zip(command, command[1:], strict=False))  # each flag -> what follows it
    return {"memory_budget": parse_bytes(flags.get("--memory-budget", "4GiB")),
            "kv_budget": parse_bytes(flags.get("--kv-budget", "512MiB"))}


def _inproc(zoo, trace: dict, reqs: list[SimRequest], prompts: dict, budgets: dict):
    """e2e of the trace's requests (each generating the tokens it generated over HTTP) on an
    engine in this process, warm (inproc.warm_replay). The simulator knows block loads
    (`first_use_s`), not the one-off library costs a first replay pays."""
    from blockllm.runtime.config import EngineConfig
    from blockllm.runtime.engine import Engine
    from blockllm.zoo.store import Zoo
    from experiments.inproc import warm_replay
    sub = {**trace, "requests": [{"i": r.i, "model": r.model, "t": r.t,
                                  "max_tokens": r.max_tokens} for r in reqs]}
    eng = Engine(Zoo(zoo), trace["models"], EngineConfig(**budgets))
    recs, _ = warm_replay(eng, sub, prompts)
    eng.close()
    return np.array([r["e2e"] for r in recs])


def run(scale: str, out: Path, zoo: str | None, models: list[str]) -> list[Path]:
    runs = sorted(out.glob(f"latency_vs_rate-{scale}-*-blockllm.jsonl"))
    if not runs:
        raise FileNotFoundError(f"run `blockllm bench run latency_vs_rate --scale {scale}` "
                                "first: the simulator is checked against its results")
    chains = curves = toks = overhead = per_seq = None
    rows = []
    for path in runs:
        header, real, _ = load(path)
        trace = json.loads((out / "traces" /
                            f"latency_vs_rate-{scale}-r{header['rate']:g}.json").read_text())
        real = real[real["status"] == "ok"]
        by_i = {int(r.i): int(r.tokens) for r in real.itertuples()}
        if chains is None:
            eng, chains, curves, cold, per_seq = measure_engine(zoo, trace["models"])
            toks = {m: eng.zoo.tokenizer(m) for m in trace["models"]}
        prompts = {r["i"]: toks[r["model"]].encode(r["prompt"]) for r in trace["requests"]}
        reqs = [SimRequest(r["i"], r["model"], r["t"], len(prompts[r["i"]]),
                           max(1, by_i[r["i"]])) for r in trace["requests"] if r["i"] in by_i]
        if overhead is None:
            overhead = overhead_per_call(eng, reqs[:8], lambda r: prompts[r.i])
        s = np.array(list(simulate_one_device(reqs, chains, curves, overhead, cold,
                                              per_seq).values()))
        warm = np.array(list(simulate_one_device(reqs, chains, curves, overhead, {},
                                                 per_seq).values()))
        # the same requests on the real engine in this process (no HTTP), same budgets
        inproc = _inproc(zoo, trace, reqs, prompts, _budgets(header["command"]))
        for q in (50, 95):
            real_q, sim_q = float(real["e2e"].quantile(q / 100)), float(np.percentile(s, q))
            eng_q, warm_q = float(np.percentile(inproc, q)), float(np.percentile(warm, q))
            rows.append({"rate": header["rate"], "budget": header.get("budget"),
                         "quantile": f"p{q}", "real_s": real_q,
                         "sim_s": sim_q, "error_pct": 100 * (sim_q - real_q) / real_q,
                         "engine_warm_s": eng_q, "sim_warm_s": warm_q,
                         "engine_error_pct": 100 * (warm_q - eng_q) / eng_q,
                         "call_overhead_s": overhead})
    if chains is not None:
        eng.close()
    path = out / f"sim_validation-{scale}.json"
    path.write_text(json.dumps({"experiment": "sim_validation", "scale": scale,
                                "rows": rows}, indent=1))
    return [path]
