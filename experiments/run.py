"""Run one system on one trace: start its server on localhost, replay, sample, stop, record.

Each results file (JSON lines: one header line with the config and environment, then one line
per request, then one line of utilization samples) carries its config, git commit, device,
package versions and seed.
"""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import httpx

from experiments.harness import Sampler, replay
from experiments.server_proc import metric, server_process

SERVE = ["-m", "blockllm.cli", "serve"]
SYSTEMS = {  # name -> the server command after `python`; every one takes --models, --port,
    #          --memory-budget, --kv-budget and --zoo
    "blockllm": SERVE,
    "per_model": SERVE + ["--baseline", "per-model"],
    "hf_generate": ["-m", "baselines.hf_generate"],
    # vLLM (the peer environment of `make setup-peers`): one server per model, or the LoRA
    # variants of a base in one multi-LoRA server; a router in front (baselines/vllm_server.py)
    "vllm_per_model": ["-m", "baselines.vllm_server", "--mode", "per-model"],
    "vllm_lora": ["-m", "baselines.vllm_server", "--mode", "lora"],
    # ablations: every default mechanism on ("full"), then one off at a time, then speculation on
    "full": SERVE + ["--equivalence"],
    "no_equivalence": SERVE,
    "no_sharing": SERVE + ["--equivalence", "--no-sharing"],
    "no_kv_coordination": SERVE + ["--equivalence", "--no-kv-coordination"],
    "fixed_batch": SERVE + ["--equivalence", "--batch-tokens", "256"],  # one limit for all blocks
    "speculation": SERVE + ["--equivalence", "--speculate"],  # an opt-in mechanism, measured
    "chain_waves": SERVE + ["--equivalence", "--wave-order", "chain"],  # the wave rule before
}


def environment() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    pkgs = {}
    for p in ("torch", "transformers", "fastapi", "uvicorn", "peft", "safetensors"):
        try:
            pkgs[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pkgs[p] = None
    import torch
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    return {"commit": commit, "python": platform.python_version(), "packages": pkgs,
            "device": device or platform.machine(), "cpus": __import__("os").cpu_count()}


def run_system(system: str, trace: dict, zoo: str | None, serve_args: list[str],
               out: Path, label: dict) -> Path:
    argv = [*SYSTEMS[system], "--models", ",".join(trace["models"]), *serve_args]
    if zoo:
        argv += ["--zoo", zoo]
    vllm = system.startswith("vllm")
    # a vLLM deployment starts several servers (about a minute each on a CPU) before /health
    with server_process(argv, timeout_s=1800 if vllm else 180) as (url, proc):
        sampler = Sampler(proc.pid)
        sampler.start()
        t0 = time.perf_counter()
        recs = asyncio.run(replay(url, trace))
        wall = time.perf_counter() - t0
        samples = sampler.stop()
        answer = httpx.get(url + "/metrics", timeout=10)
        server_metrics = answer.text if answer.status_code == 200 else ""  # hf_generate has none
        deployment = httpx.get(url + "/deployment", timeout=10).json() if vllm else None
    header = {"system": system, **label, "trace_config": trace["config"], "wall_s": wall,
              "command": SYSTEMS[system] + serve_args, "sampler": sampler.kind,
              "env": environment(), "deployment": deployment,
              "preemptions": metric(server_metrics, "blockllm_preemptions_total"),
              **{name: metric(server_metrics, f"blockllm_{name}_total")
                 for name in ("cold_loads", "load_seconds", "prefetches", "prefetch_hits",
                              "prefetch_wasted")},
              # vLLM deployments: servers started (cold starts) and the seconds they took
              "server_starts": metric(server_metrics, "vllm_router_server_starts_total"),
              "server_start_seconds": metric(server_metrics, "vllm_router_start_seconds_total")}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        f.write(json.dumps({"header": header}) + "\n")
        for r in recs:
            f.write(json.dumps({"request": {**asdict(r), "tpot": r.tpot}}) + "\n")
        f.write(json.dumps({"samples": samples}) + "\n")
    return out
