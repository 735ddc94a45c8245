"""`make demo`: two minutes with the embedded SmolLM2 and variants sharing its blocks.

Starts `blockllm serve` on localhost, sends requests of several models through the official
openai client (streamed, a few at a time), prints per-model latency and the server's block
calls, and draws one figure (paper_figures/out/demo.png).

The models: the zoo's trained variants where `make variants` has made them (partial fine-tunes
and LoRA adapters of SmolLM2); otherwise, in a demo zoo of its own, the embedded model and two
*untrained* copies whose top 4 of 30 layers are perturbed: they answer like the base, and show
only the mechanism (26 shared layers batched across models), not a fine-tune's skill.

    python -m experiments.demo [--requests 12] [--max-tokens 24] [--out paper_figures/out]
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

PROMPTS = ["Compute: 12+30=", "Reverse the words: red green blue ->",
           "The capital of France is", "Write one sentence about the sea.",
           "Review: I loved this film. Sentiment:", "Uppercase: hello world ->"]
TRAINED = {"smollm2-arith-top4": "arith", "smollm2-sentiment-lora": "sentiment",
           "smollm2-reverse-top4": "reverse"}  # variant: the task `make variants` trained


def plan(models: list[str], n: int) -> list[tuple[str, str, str]]:
    """n (model, prompt, expected answer) requests. Trained variants get held-out examples of
    their own task, each sent to the variant and to the base, so the table shows what the
    fine-tune changed; untrained copies cycle through PROMPTS."""
    from blockllm.evaluation.tasks import EVAL_SEED, TASKS
    if not set(TRAINED) <= set(models):
        return [(models[i % len(models)], PROMPTS[i % len(PROMPTS)], "") for i in range(n)]
    examples = {v: TASKS[t].examples(n, EVAL_SEED) for v, t in TRAINED.items()}
    jobs = [(m, *examples[v][k]) for k in range(n) for v in TRAINED for m in (v, models[0])]
    return [(m, p, a.strip()) for m, p, a in jobs[:n]]


def demo_zoo() -> tuple[str | None, list[str]]:
    """(zoo dir, models): the default zoo's trained variants, else a demo zoo made here."""
    from blockllm.variants.build import cache_root
    from blockllm.zoo.ingest import EMBEDDED_NAME, add_source, ensure_embedded
    from blockllm.zoo.store import Zoo
    zoo = Zoo()
    if all(m in zoo.models() for m in TRAINED):
        return None, [EMBEDDED_NAME, *TRAINED]
    zoo = Zoo(cache_root() / "demo-zoo")
    if ensure_embedded(zoo):
        click.echo(f"added the embedded SmolLM2-135M-Instruct to {zoo.root}")
    names = [EMBEDDED_NAME]
    for seed in (1, 2):
        name = f"{EMBEDDED_NAME}-untrained-top4-{seed}"
        if name not in zoo.models():
            from blockllm.loaders import load_source
            add_source(zoo, perturbed_top(load_source("embedded"), 4, seed), name,
                       meta={"kind": "partial", "note": "untrained demo copy"})
        names.append(name)
    click.echo("no trained variants in the zoo (`make variants` trains them in about 5 "
               "minutes): serving two untrained copies with perturbed top 4 layers")
    return str(zoo.root), names


def perturbed_top(src, top: int, seed: int):
    """src with its top `top` decoder layers nudged (0.1% noise); the rest byte-identical."""
    import torch
    g = torch.Generator().manual_seed(seed)
    n = src.config.num_hidden_layers
    tensors = {k: v + 1e-3 * v.abs().mean() * torch.randn(v.shape, generator=g)
               if k.startswith("model.layers.") and int(k.split(".")[2]) >= n - top else v
               for k, v in src.tensors.items()}
    return type(src)(config=src.config, tensors=tensors, origin=f"{src.origin}+demo{seed}",
                     tokenizer_loader=src.tokenizer_loader)


def one_request(url: str, model: str, prompt: str, answer: str, max_tokens: int) -> dict:
    from openai import OpenAI
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    t0 = time.perf_counter()
    first, text = None, ""
    stop = ["\n"] if answer else None  # task answers end at a newline
    for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                           temperature=0, stream=True, stop=stop):
        first = first or time.perf_counter() - t0
        text += chunk.choices[0].text
    return {"model": model, "prompt": prompt.replace("\n", " ")[:48], "expected": answer,
            "ttft_s": first, "e2e_s": time.perf_counter() - t0,
            "text": text.strip().replace("\n", " ")[:36]}


@click.command()
@click.option("--requests", "n", default=12, show_default=True)
@click.option("--max-tokens", default=24, show_default=True)
@click.option("--concurrency", default=4, show_default=True)
@click.option("--out", default="paper_figures/out", show_default=True)
def main(n, max_tokens, concurrency, out):
    import httpx
    import pandas as pd
    import seaborn as sns

    from experiments.server_proc import metric, server_process
    from paper_figures._save import save
    t_start = time.perf_counter()
    zoo, models = demo_zoo()
    argv = ["-m", "blockllm.cli", "serve", "--models", ",".join(models)]
    argv += ["--zoo", zoo] if zoo else []
    click.echo(f"starting blockllm serve with {', '.join(models)}")
    with server_process(argv, timeout_s=300) as (url, _):
        jobs = plan(models, n)
        with ThreadPoolExecutor(concurrency) as pool:
            rows = list(pool.map(lambda j: one_request(url, *j, max_tokens), jobs))
        metrics = httpx.get(url + "/metrics", timeout=10).text
    df = pd.DataFrame(rows)
    click.echo(df.to_string(index=False, float_format="%.2f"))
    click.echo("\n" + df.groupby("model")[["ttft_s", "e2e_s"]].describe(
        percentiles=[0.5]).loc[:, (slice(None), ["count", "50%", "max"])].to_string(
        float_format="%.2f"))
    calls = metric(metrics, "blockllm_block_calls_total")
    tokens = metric(metrics, "blockllm_tokens_total")
    if calls and tokens:
        click.echo(f"\nblock calls per generated token: {calls / tokens:.2f} (a call runs every "
                   "request of its batch, whichever model it belongs to)")
    ax = sns.stripplot(data=df, x="e2e_s", y="model", hue="model", legend=False, size=7)
    ax.set(xlabel="end-to-end latency (s)", ylabel="", title=f"blockllm demo: {n} requests, "
           f"{concurrency} at a time, {max_tokens} tokens")
    ax.figure.tight_layout()
    paths = save(ax.figure, Path(out), "demo")
    click.echo(f"figure: {paths[0]}; demo took {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
