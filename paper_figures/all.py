"""Every figure from what results/ holds; a figure whose results are missing is skipped and said.

    blockllm figures [--results results] [--out paper_figures/out]
"""

from __future__ import annotations

from pathlib import Path

from paper_figures import (
    benchmarks,
    equivalence,
    footprint,
    placement,
    serving,
    sim_validation,
    variants,
)


def draw_all(results: Path, out_dir: Path, say=print) -> list[Path]:
    runs = results / "runs"
    jobs = [("variants", variants.draw, results / "variants.json"),
            ("footprint", footprint.draw, runs),
            ("serving", serving.draw, runs),
            ("placement", placement.draw, runs),
            ("sim_validation", sim_validation.draw, results),
            ("benchmarks", benchmarks.draw, results)]
    accuracy = list(runs.glob("accuracy-*.json"))
    jobs.append(("equivalence", equivalence.draw,
                 runs if accuracy else results / "equivalence.json"))
    paths = []
    for name, draw, source in jobs:
        if not source.exists():
            say(f"skipped {name}: {source} does not exist")
            continue
        try:
            paths += draw(source, out_dir)
        except FileNotFoundError as e:
            say(f"skipped {name}: {e}")
    return paths
