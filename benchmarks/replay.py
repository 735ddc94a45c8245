"""One engine setting against another on the same Poisson trace, in one process, alternating.

    python -m benchmarks.replay --field wave_order --values chain,cycle [--rate 1.5]
           [--requests 40] [--rounds 6] [--models smollm2] [--zoo DIR] [--out ...]

One engine per value of an EngineConfig field (everything else as `blockllm serve` sets it:
4 GiB of weights, 1 GiB of KV), each warmed up. Then `rounds` rounds replay the same trace
on each engine in turn, the order flipped every round: random prompts of 128 token ids, 32
output tokens each, no stop tokens, Poisson arrivals at `rate`, each request's model drawn
uniformly from `models` (seed 0). No HTTP server: what differs is the engine alone
(experiments.inproc). The machines this runs on drift by 1.5-4x between minutes, so a
setting is judged by the medians over rounds and by how many rounds it wins, never by one
replay. Writes results/bench_replay-FIELD.{json,md}.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from blockllm.runtime.config import EngineConfig
from experiments.inproc import replay_engine

METRICS = ("ttft_p50", "ttft_p95", "tpot_p50", "e2e_p50", "e2e_p95")


def parse(field: str, value: str):
    """A value of the EngineConfig field: None, true/false for a flag, else a number where it
    reads as one, else the text (EngineConfig checks the rest)."""
    default = {f.name: f.default for f in dataclasses.fields(EngineConfig)}.get(field, KeyError)
    if default is KeyError:
        raise click.BadParameter(f"EngineConfig has no field {field!r}")
    if value == "None":
        return None
    if isinstance(default, bool):
        if value not in ("true", "false"):
            raise click.BadParameter(f"{field} is true or false, not {value!r}")
        return value == "true"
    for number in (int, float):
        try:
            return number(value)
        except ValueError:
            pass
    return value


def make_trace(rate: float, n: int, models: list[str], prompt_len: int, max_tokens: int,
               vocab: int):
    """The trace (experiments.inproc's form) and each request's prompt: random token ids
    below `vocab` (100 to 40000 for SmolLM2)."""
    rng = np.random.default_rng(0)
    high = min(40000, vocab)
    t = np.cumsum(rng.exponential(1 / rate, n))
    requests = [{"i": i, "t": float(t[i] - t[0]), "model": models[rng.integers(len(models))],
                 "max_tokens": max_tokens} for i in range(n)]
    prompts = {i: rng.integers(min(100, high // 2), high, prompt_len).tolist() for i in range(n)}
    return {"requests": requests}, prompts


def summarize(records: list[dict], max_tokens: int) -> dict:
    ttft = np.array([r["ttft"] for r in records])
    e2e = np.array([r["e2e"] for r in records])
    tpot = (e2e - ttft) / max(1, max_tokens - 1)
    return {"ttft_p50": float(np.median(ttft)), "ttft_p95": float(np.percentile(ttft, 95)),
            "tpot_p50": float(np.median(tpot)), "e2e_p50": float(np.median(e2e)),
            "e2e_p95": float(np.percentile(e2e, 95))}


@click.command()
@click.option("--field", required=True, help="an EngineConfig field, e.g. wave_order")
@click.option("--values", required=True, help="comma-separated, the baseline first")
@click.option("--rate", default=1.5, show_default=True, help="requests per second")
@click.option("--requests", default=40, show_default=True)
@click.option("--rounds", default=6, show_default=True)
@click.option("--models", default="smollm2", show_default=True)
@click.option("--zoo", default=None)
@click.option("--prompt-len", default=128, show_default=True)
@click.option("--max-tokens", default=32, show_default=True)
@click.option("--out", default=None, help="default results/bench_replay-FIELD.json")
def main(field, values, rate, requests, rounds, models, zoo, prompt_len, max_tokens, out):
    from blockllm.runtime.engine import Engine
    from blockllm.zoo.store import Zoo

    settings = values.split(",")
    model_list = models.split(",")
    try:
        cfgs = {v: EngineConfig(memory_budget=4 << 30, kv_budget=1 << 30,
                                **{field: parse(field, v)}) for v in settings}
    except ValueError as e:
        raise click.BadParameter(f"{field}: {e}", param_hint="--values") from e
    store = Zoo(zoo)
    vocab = min(store.config(m).vocab_size for m in model_list)
    trace, prompts = make_trace(rate, requests, model_list, prompt_len, max_tokens, vocab)
    warm = {"requests": trace["requests"][:6]}
    engines = {}
    try:
        for v in settings:
            engines[v] = Engine(store, model_list, cfgs[v])
            engines[v].warm_up()
            replay_engine(engines[v], warm, prompts)  # every kernel shape met once
        rows = []
        for r in tqdm(range(rounds), desc="rounds"):
            for v in settings if r % 2 == 0 else settings[::-1]:
                rows.append({"round": r, "value": v,
                             **summarize(replay_engine(engines[v], trace, prompts), max_tokens)})
    finally:
        for e in engines.values():
            e.close()
    out_path = Path(out or f"results/bench_replay-{field}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    setup = {"field": field, "values": settings, "rate": rate, "requests": requests,
             "rounds": rounds, "models": model_list, "prompt_len": prompt_len,
             "max_tokens": max_tokens}
    out_path.write_text(json.dumps({**setup, "rows": rows}, indent=1))
    lines = report(setup, rows)
    out_path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


def report(setup: dict, rows: list[dict]) -> list[str]:
    """Medians over rounds per value, the last value over the first, and the rounds won."""
    field, settings = setup["field"], setup["values"]
    med = {v: {m: float(np.median([r[m] for r in rows if r["value"] == v])) for m in METRICS}
           for v in settings}
    lines = [f"# {field} in the engine, replayed in process", "",
             f"`python -m benchmarks.replay --field {field} --values {','.join(settings)} "
             f"--rate {setup['rate']:g} --requests {setup['requests']} --rounds "
             f"{setup['rounds']} --models {','.join(setup['models'])}`: Poisson arrivals, "
             f"{setup['prompt_len']}-token prompts, {setup['max_tokens']} tokens out; medians "
             "over alternating rounds (seconds)", "",
             "| value | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for v in settings:
        lines.append(f"| {field}={v} | " + " | ".join(f"{med[v][m]:.3f}" for m in METRICS) +
                     " |")
    first, last = settings[0], settings[-1]
    ratio = " | ".join(f"{med[last][m] / med[first][m]:.2f}" for m in METRICS)
    lines.append(f"| {last} / {first} | {ratio} |")
    by_round = {(r["round"], r["value"]): r for r in rows}
    for m in ("ttft_p50", "e2e_p95"):
        won = sum(by_round[i, last][m] < by_round[i, first][m] for i in range(setup["rounds"]))
        lines.append(f"\n{last} had the lower {m} in {won} of {setup['rounds']} rounds")
    return lines


if __name__ == "__main__":
    main()
