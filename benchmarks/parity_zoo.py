"""Check the engine on a real zoo: every model, requests of all models at once, greedy outputs
equal to each model's reference chain (itself proven equal to transformers in tests/).

    python -m benchmarks.parity_zoo [--zoo DIR] [--tokens 12]
"""

from __future__ import annotations

import click

from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.evaluation.tasks import TASKS
from blockllm.zoo.ingest import chain_model
from blockllm.zoo.store import Zoo


@click.command()
@click.option("--zoo", "zoo_dir", default=None)
@click.option("--tokens", default=12, show_default=True)
def main(zoo_dir, tokens):
    zoo = Zoo(zoo_dir)
    models = zoo.models()
    tok = zoo.tokenizer(models[0])
    prompts = [tok.encode(TASKS[t].examples(1, 5)[0][0]) for t in sorted(TASKS)]
    ref = {m: [chain_model(zoo, m).generate([p], tokens, stop_ids=())[0] for p in prompts]
           for m in models}
    eng = Engine(zoo, models, EngineConfig())
    reqs = [(m, i, eng.submit(m, p, max_tokens=tokens, stop_ids=frozenset()))
            for i, p in enumerate(prompts) for m in models]
    while eng.has_work():
        eng.step()
    bad = [(m, i) for m, i, r in reqs if r.output != ref[m][i]]
    print(f"{len(reqs) - len(bad)}/{len(reqs)} requests equal the reference; mismatches: {bad}")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
