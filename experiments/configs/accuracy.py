"""Experiment 3: accuracy impact of equivalence. For every model, the chains that a sweep of
equivalence thresholds assembles are measured end to end (task score on held-out examples,
perplexity, resident bytes freed) against the model's exact chain; the evidence and the
measured options are stored in the zoo, where `blockllm serve --equivalence` (experiment 4)
reads them. Same code as `blockllm zoo equivalence` (blockllm.zoo.pipeline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from experiments.run import environment


@dataclass(frozen=True)
class Scale:
    n_eval: int  # held-out task examples per measured chain
    thresholds: tuple[float, ...]
    stitches: tuple[tuple[str, str, int], ...]  # (model, donor, cut) stitched chains to measure


SCALES = {
    "toy": Scale(4, (0.01, 0.1), ()),
    "cpu-small": Scale(50, (0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
                       (("smollm2-arith-full", "smollm2", 16),)),
    "gpu-full": Scale(200, (0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
                      (("smollm2-arith-full", "smollm2", 16),)),
}


def run(scale: str, out: Path, zoo: str | None, models: list[str]) -> list[Path]:
    from blockllm.zoo.pipeline import run_equivalence
    from blockllm.zoo.store import Zoo
    s = SCALES[scale]
    z = Zoo(zoo)
    stitches = [st for st in s.stitches if st[0] in models and st[1] in models]
    result = run_equivalence(z, models, s.thresholds, s.n_eval, stitches)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"accuracy-{scale}.json"
    path.write_text(json.dumps({"experiment": "accuracy", "scale": scale, "zoo": str(z.root),
                                "env": environment(), **result}, indent=1))
    return [path]
