"""KV pages by sharing degree against the same pages in every pool, under one tight KV budget:
a burst of requests of SmolLM2 and variants that share its blocks, on the in-process engine.
Reports the most requests admitted at once, p50/p95 latency (submission to last token) and
preemptions, both splits in one run (results/bench_kv_split.{json,md}).

    python -m benchmarks.kv_split [--kv-budget 24MiB] [--per-model 6] [--max-tokens 32]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

MODELS = ("smollm2", "smollm2-arith-top4", "smollm2-reverse-top4", "smollm2-sentiment-lora")


def burst(zoo, models, kv_budget: int, by_sharing: bool, per_model: int, max_tokens: int,
          prompt_tokens: int) -> dict:
    import numpy as np

    from blockllm.evaluation.tasks import perplexity_text
    from blockllm.runtime.config import EngineConfig
    from blockllm.runtime.engine import Engine
    tok = zoo.tokenizer(models[0])
    text = tok.encode(perplexity_text(20000))
    eng = Engine(zoo, list(models), EngineConfig(kv_budget=kv_budget, kv_by_sharing=by_sharing))
    try:
        eng.warm_up()
        pages = {str(k)[:20]: t.num_pages for k, t in eng.sched.kv.tables.items()}
        t0 = time.perf_counter()
        reqs = [eng.submit(m, text[i * prompt_tokens: (i + 1) * prompt_tokens],
                           max_tokens=max_tokens, stop_ids=frozenset())
                for i in range(per_model) for m in models]
        done, peak = {}, 0
        while eng.has_work():
            eng.step()
            peak = max(peak, len(eng.sched.running))
            now = time.perf_counter()
            for r in reqs:
                if r.finish_reason is not None and r.id not in done:
                    done[r.id] = now - t0
        lat = np.array(list(done.values()))
        return {"kv_by_sharing": by_sharing, "peak_running": peak, "requests": len(reqs),
                "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
                "wall_s": time.perf_counter() - t0,
                "preemptions": eng.counters["preemptions"], "pages": pages}
    finally:
        eng.close()


@click.command()
@click.option("--kv-budget", default="24MiB", show_default=True)
@click.option("--per-model", default=6, show_default=True)
@click.option("--max-tokens", default=32, show_default=True)
@click.option("--prompt-tokens", default=64, show_default=True)
@click.option("--out", default="results/bench_kv_split.json", show_default=True)
def main(kv_budget, per_model, max_tokens, prompt_tokens, out):
    from blockllm.units import parse_bytes
    from blockllm.zoo.store import Zoo
    zoo = Zoo()
    models = [m for m in MODELS if m in zoo.models()]
    rows = [burst(zoo, models, parse_bytes(kv_budget), s, per_model, max_tokens, prompt_tokens)
            for s in (False, True)]
    out = Path(out)
    out.write_text(json.dumps({"models": models, "kv_budget": kv_budget, "rows": rows},
                              indent=1))
    lines = [f"# KV pages by sharing degree (`python -m benchmarks.kv_split`, {kv_budget} of "
             f"KV, {per_model * len(models)} requests at once over {len(models)} models, "
             f"{prompt_tokens} prompt + {max_tokens} output tokens)\n",
             "| KV split | most admitted at once | p50 (s) | p95 (s) | preemptions |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {'by sharing degree' if r['kv_by_sharing'] else 'equal (default)'} | "
                     f"{r['peak_running']} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | "
                     f"{r['preemptions']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
