"""Experiment 2: storage and resident-memory footprint vs number of variants, by variant kind.

Variants of each kind are derived from the base deterministically (experiments/synthetic.py),
cut into blocks by the zoo's own partition code and content-addressed. The footprint of n
variants is the unique-bytes bound of base + n variants (what the zoo stores, and what
serving them all keeps resident); per-model serving stores and loads every model whole.
Task quality is not the point here (see variants.json / equivalence.json for that).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from blockllm.loaders import load_source
from blockllm.zoo.partition import partition
from experiments.synthetic import variant


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
            blocks, _ = partition(variant(base, kind, i, s.top_layers))
            sizes.update({b.id: b.nbytes for b in blocks})
            logical += sum(b.nbytes for b in blocks)
            rows.append({"kind": kind, "variants": i, "zoo_bytes": sum(sizes.values()),
                         "per_model_bytes": logical, "base_bytes": whole})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"footprint-{scale}.json"
    path.write_text(json.dumps({"experiment": "footprint", "scale": scale, "base": s.base,
                                "rows": rows}, indent=1))
    return [path]
