"""`zoo make-variants`: train (once, cached) and add fine-tuned variants of a base to the zoo.

Variants are cached under $BLOCKLLM_CACHE/variants/<key> (default ~/.cache/blockllm), keyed
by the base and the recipe, so a rerun only adds what is missing. Each variant is scored on its
own task against the base, and both are recorded (zoo manifest meta + the returned rows).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from blockllm.loaders import load_source
from blockllm.evaluation.evaluate import perplexity, task_score
from blockllm.variants.train import Recipe, train
from blockllm.zoo.ingest import add, add_source, chain_model
from blockllm.zoo.store import Zoo

RECIPES: tuple[Recipe, ...] = (
    Recipe("arith-top4", "arith", "partial", steps=60, lr=1e-4, top_layers=4),
    Recipe("reverse-top4", "reverse", "partial", steps=60, lr=1e-4, top_layers=4),
    Recipe("sentiment-lora", "sentiment", "lora", steps=40, lr=1e-3),
    Recipe("upper-lora", "upper", "lora", steps=60, lr=1e-3),
    Recipe("arith-full", "arith", "full", steps=60, lr=3e-5),
)

TINY_RECIPES: tuple[Recipe, ...] = (
    Recipe("sentiment-top1", "sentiment", "partial", steps=150, lr=3e-3, batch_size=8,
           top_layers=1),
    Recipe("sentiment-lora", "sentiment", "lora", steps=150, lr=1e-2, batch_size=8, lora_rank=4),
    Recipe("sentiment-full", "sentiment", "full", steps=150, lr=3e-3, batch_size=8),
)


def cache_root() -> Path:
    return Path(os.environ.get("BLOCKLLM_CACHE") or Path.home() / ".cache" / "blockllm")


def _key(base_spec: str, recipe: Recipe) -> str:
    text = json.dumps({"base": base_spec, "recipe": asdict(recipe), "v": 1}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_variant(base_spec: str, recipe: Recipe, cache: Path, progress: bool) -> Path:
    """The trained variant's directory, training it first if the cache lacks it."""
    out = cache / "variants" / f"{recipe.name}-{_key(base_spec, recipe)}"
    if (out / "losses.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    losses = train(load_source(base_spec), recipe, tmp, progress)
    (tmp / "losses.json").write_text(json.dumps(losses))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # the cache entry appears whole or not at all
    return out


def make_variants(zoo: Zoo, base_spec: str = "embedded", base_name: str = "smollm2",
                  recipes: tuple[Recipe, ...] = RECIPES, n_eval: int = 50,
                  cache: Path | None = None, progress: bool = True) -> list[dict]:
    """Add base + variants to the zoo; returns one row of scores per variant."""
    cache = cache or cache_root()
    if base_name not in zoo.models():
        add_source(zoo, load_source(base_spec), base_name, meta={"kind": "base"})
    tok = zoo.tokenizer(base_name)
    base_model = chain_model(zoo, base_name)
    base_scores: dict[str, float] = {}
    base_ppl: list[float] = []  # computed at most once, only if some row needs it
    rows = []
    for recipe in tqdm(recipes, desc="variants", disable=not progress):
        name = f"{base_name}-{recipe.name}"
        path = build_variant(base_spec, recipe, cache, progress)
        meta = {"kind": recipe.kind, "task": recipe.task, "recipe": asdict(recipe)}
        if name not in zoo.models():
            add(zoo, str(path), name, base=base_name if recipe.kind == "lora" else None,
                meta=meta)
        scores_file = path / f"scores-v3-n{n_eval}.json"
        if scores_file.is_file():
            row = json.loads(scores_file.read_text())
        else:
            if recipe.task not in base_scores:
                base_scores[recipe.task] = task_score(base_model, tok, recipe.task, n_eval)
            if not base_ppl:
                base_ppl.append(perplexity(base_model, tok))
            model = chain_model(zoo, name)
            row = {"variant": name, "kind": recipe.kind, "task": recipe.task,
                   "base_score": base_scores[recipe.task],
                   "score": task_score(model, tok, recipe.task, n_eval),
                   "base_perplexity": base_ppl[0],
                   "perplexity": perplexity(model, tok), "n_eval": n_eval,
                   "final_loss": json.loads((path / "losses.json").read_text())[-1]}
            scores_file.write_text(json.dumps(row, indent=1))
        rows.append(row)
    return rows
