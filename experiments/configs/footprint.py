"""Experiment 2: storage and resident-memory footprint vs number of variants, by variant kind.

Variants of each kind are derived from the base deterministically (partial: the top 4 decoder
layers perturbed; LoRA: a random rank-8 adapter on every layer; full: every tensor perturbed),
cut into blocks by the zoo's own partition code and content-addressed. The footprint of n
variants is the unique-bytes bound of base + n variants (what the zoo stores, and what
serving them all keeps resident); per-model serving stores and loads every model whole.
Task quality is not the point here (see variants.json / equivalence.json for that).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from blockllm.loaders import load_source
from blockllm.loaders.source import LoraSource, ModelSource
from blockllm.models.lora import TARGETS
from blockllm.zoo.partition import partition


@dataclass(frozen=True)
class Scale:
    base: str  # model source of the base
    n_max: int  # variants per kind
    top_layers: int  # partial fine-tunes retrain this many top layers


SCALES = {
    "toy": Scale("dummy:tiny", 3, 1),
    "cpu-small": Scale("embedded", 8, 4),
    "gpu-full": Scale("dummy:llama-2-7b", 64, 4),
}


def _variant(base: ModelSource, kind: str, i: int, top: int) -> ModelSource:
    g = torch.Generator().manual_seed(1000 + i)
    n = base.config.num_hidden_layers
    t = dict(base.tensors)
    adapter = None
    if kind == "lora":
        lora = {}
        for layer in range(n):
            for m in TARGETS[:4]:  # attention projections; their shapes are (h, h)-like
                w = t[f"model.layers.{layer}.{m}.weight"]
                lora[f"model.layers.{layer}.{m}.lora_A"] = torch.randn(8, w.shape[1], generator=g)
                lora[f"model.layers.{layer}.{m}.lora_B"] = torch.randn(w.shape[0], 8, generator=g)
        adapter = LoraSource(lora, 2.0, 8, None, f"synthetic-lora-{i}")
    else:
        for k, v in t.items():
            parts = k.split(".")
            in_top = parts[:2] == ["model", "layers"] and int(parts[2]) >= n - top
            if kind == "full" or in_top:
                t[k] = v + 1e-3 * torch.randn(v.shape, generator=g)
    return ModelSource(base.config, t, f"synthetic-{kind}-{i}", adapter=adapter)


def run(scale: str, out: Path, zoo: str | None = None, models=None) -> list[Path]:
    s = SCALES[scale]
    base = load_source(s.base)
    base_blocks, _ = partition(base)
    base_sizes = {b.id: b.nbytes for b in base_blocks}
    whole = sum(base_sizes.values())
    rows = []
    for kind in ("partial", "lora", "full"):
        sizes = dict(base_sizes)
        logical = whole
        for i in tqdm(range(1, s.n_max + 1), desc=f"footprint {kind}"):
            blocks, _ = partition(_variant(base, kind, i, s.top_layers))
            sizes.update({b.id: b.nbytes for b in blocks})
            logical += sum(b.nbytes for b in blocks)
            rows.append({"kind": kind, "variants": i, "zoo_bytes": sum(sizes.values()),
                         "per_model_bytes": logical, "base_bytes": whole})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"footprint-{scale}.json"
    path.write_text(json.dumps({"experiment": "footprint", "scale": scale, "base": s.base,
                                "rows": rows}, indent=1))
    return [path]
