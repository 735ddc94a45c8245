"""`blockllm zoo make-variants`: fine-tuned variants of the base model, built once and cached."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from blockllm.cli import user_errors


@click.command("make-variants")
@click.option("--base", "base_spec", default="embedded", show_default=True,
              help="Source of the base model (embedded, dummy:PRESET, .gguf, HF dir).")
@click.option("--base-name", default=None, help="Zoo name of the base (default smollm2, or tiny).")
@click.option("--tiny", is_flag=True, help="A tiny random base and short recipes (for tests).")
@click.option("--n-eval", default=50, show_default=True, type=click.IntRange(1),
              help="Held-out examples scored per task.")
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Where variants.json (the score table) is written.")
@click.option("--zoo", "zoo_dir", default=None, type=click.Path(file_okay=False))
@user_errors
def make_variants(base_spec, base_name, tiny, n_eval, results, zoo_dir):
    """Train partial, LoRA and full fine-tunes of the base; add them and score them."""
    from blockllm.variants.build import RECIPES, TINY_RECIPES
    from blockllm.variants.build import make_variants as build
    from blockllm.zoo.store import Zoo

    if tiny and base_spec == "embedded":
        base_spec = "dummy:tiny"
    name = base_name or ("tiny" if tiny else "smollm2")
    from blockllm.zoo.report import model_bytes
    z = Zoo(zoo_dir)
    rows = build(z, base_spec, name, TINY_RECIPES if tiny else RECIPES, n_eval)
    names = [name] + [r["variant"] for r in rows]
    storage = {"stats": asdict(z.stats()),
               "models": {n: asdict(model_bytes(z, n)) for n in names}}
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("variants-tiny.json" if tiny else "variants.json")).write_text(json.dumps(
        {"base": base_spec, "command": "blockllm zoo make-variants" + (" --tiny" if tiny else ""),
         "rows": rows, "storage": storage}, indent=1))
    click.echo(f"{'variant':28s} {'kind':8s} {'task':10s} {'base':>6s} {'score':>6s} "
               f"{'base ppl':>8s} {'ppl':>7s}")
    for r in rows:
        flag = "" if r["score"] > r["base_score"] else "  <- does not beat the base"
        click.echo(f"{r['variant']:28s} {r['kind']:8s} {r['task']:10s} {r['base_score']:6.1f} "
                   f"{r['score']:6.1f} {r['base_perplexity']:8.2f} {r['perplexity']:7.2f}{flag}")
