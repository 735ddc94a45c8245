"""What several devices cost on one machine: the same requests on one device, on two in-process
hosts and on two Ray actors, each with one replica per block and with two replicas of the
shared blocks (routed per request, runtime.routing), greedy, all 6 zoo models x 4 requests x
16 tokens at once.

    python -m benchmarks.devices [--zoo DIR] [--out results/devices.json]

On a single CPU the extra hosts share the same cores, so this measures overhead (scheduling
per device, Ray's inter-process calls and object store), not speed-up; outputs must match.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command()
@click.option("--zoo", "zoo_dir", default=None, type=click.Path(file_okay=False))
@click.option("--out", default="results/devices.json", type=click.Path(dir_okay=False))
def main(zoo_dir, out):
    from blockllm.runtime.config import EngineConfig
    from blockllm.runtime.engine import Engine
    from blockllm.zoo.store import Zoo
    zoo = Zoo(zoo_dir)
    models = zoo.models()
    prompts = {m: zoo.tokenizer(m).encode("Compute: 12+30=") for m in models}
    rows, first = [], None
    for devices, backend, replicas in [(1, "local", 1), (2, "local", 1), (2, "local", 2),
                                       (2, "ray", 1), (2, "ray", 2)]:
        eng = Engine(zoo, models, EngineConfig(memory_budget=3 << 30, devices=devices,
                                               backend=backend, replicas=replicas))
        for m in models:  # warm: every block loaded and profiled
            eng.generate(m, [prompts[m]], 2)
        t = time.perf_counter()
        reqs = [eng.submit(m, prompts[m], max_tokens=16, stop_ids=frozenset())
                for m in models for _ in range(4)]
        while eng.has_work():
            eng.step()
        wall = time.perf_counter() - t
        outs = [r.output for r in reqs]
        first = first or outs
        rows.append({"devices": devices, "backend": backend, "replicas": replicas, "wall_s": wall,
                     "tokens_per_s": sum(map(len, outs)) / wall, "steps": eng.counters["steps"],
                     "same_tokens_as_one_device": outs == first})
        click.echo(json.dumps(rows[-1]))
        eng.close()
    Path(out).write_text(json.dumps({"benchmark": "devices", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
