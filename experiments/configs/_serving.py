"""What every serving experiment shares: for each point, one seeded trace saved once, then the
same trace replayed against every system (a server started on localhost by the harness)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from experiments.run import run_system
from experiments.workloads import (
    WorkloadConfig,
    load_prompts,
    make_trace,
    prompt_set,
    save_trace,
)


@dataclass(frozen=True)
class Point:
    tag: str  # names the files: {experiment}-{scale}-{tag}-{system}.jsonl
    label: dict  # recorded in each results header (rate, cv, n_models, ...)
    workload: WorkloadConfig
    systems: tuple[str, ...]
    serve_args: tuple[str, ...]  # the same budgets for every system of the point
    models: tuple[str, ...] | None = None  # None: every model given to run_points
    zoo: str | None = None  # None: the zoo given to run_points


VLLM = ("vllm_per_model", "vllm_lora")  # the peers, where they apply (see `applies`)
RESUME = False  # `bench run --resume`: keep a results file that already holds its whole trace


def complete(path: Path, trace: dict) -> bool:
    """Whether `path` holds a finished run of `trace`: the same trace config, one record per
    request and the closing samples line (a run cut off mid-way writes nothing)."""
    if not path.exists():
        return False
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or "header" not in lines[0] or "samples" not in lines[-1]:
        return False
    n = sum("request" in line for line in lines)
    same = json.loads(json.dumps(trace["config"]))  # tuples as the file holds them: lists
    return lines[0]["header"].get("trace_config") == same and \
        n == len(trace["requests"])


def applies(system: str, scale: str, zoo: str | None, models: list[str]) -> str | None:
    """Why `system` does not run at this point (None: it does). vLLM needs the peer venv and
    real tokenizers (the toy scale's byte tokenizer is ours only); multi-LoRA needs LoRA
    models."""
    if not system.startswith("vllm"):
        return None
    if scale == "toy":
        return "toy models have no HF tokenizer"
    from baselines.vllm_deploy import peers_python
    from blockllm.errors import UserError
    try:
        peers_python()
    except UserError as e:
        return str(e)
    if system == "vllm_lora":
        from blockllm.zoo.store import Zoo
        z = Zoo(zoo)
        if not any(e.adapter for m in models for e in z.chain(m)):
            return "no LoRA model is served"
    return None


def run_points(experiment: str, scale: str, points: list[Point], out: Path, zoo: str | None,
               models: list[str]) -> list[Path]:
    prompts = load_prompts(prompt_set(out / "traces" / "prompts.json"))
    jobs = []
    for p in points:
        for system in p.systems:
            why = applies(system, scale, p.zoo or zoo, list(p.models or models))
            if why is None:
                jobs.append((p, system))
            else:
                tqdm.write(f"{experiment}[{scale}] {p.tag}: skipping {system}: {why}")
    paths, traces = [], {}
    for p, system in tqdm(jobs, desc=f"{experiment}[{scale}]"):
        if p.tag not in traces:
            traces[p.tag] = make_trace(p.workload, list(p.models or models), prompts)
            save_trace(traces[p.tag], out / "traces" / f"{experiment}-{scale}-{p.tag}.json")
        path = out / f"{experiment}-{scale}-{p.tag}-{system}.jsonl"
        if RESUME and complete(path, traces[p.tag]):
            tqdm.write(f"{experiment}[{scale}] {p.tag}: keeping {path.name} (--resume)")
            paths.append(path)
            continue
        run_system(system, traces[p.tag], p.zoo or zoo, list(p.serve_args), path,
                   {"experiment": experiment, "scale": scale, **p.label})
        paths.append(path)
    return paths


def budgets(memory: str, kv: str) -> tuple[str, ...]:
    return ("--memory-budget", memory, "--kv-budget", kv)
