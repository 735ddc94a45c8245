"""Saving a figure as PNG and PDF, the largest scale's results, and the command-line entry every
figure module shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

SCALE_ORDER = ("gpu-full", "cpu-small", "toy")  # a figure draws the largest scale present


def save(fig, out_dir: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")  # keep axis labels inside the image
    plt.close(fig)
    return paths


def largest_scale(results: Path, experiment: str, ext: str) -> list[Path]:
    """The results files of `experiment` at the largest scale that has any."""
    for scale in SCALE_ORDER:
        paths = sorted(results.glob(f"{experiment}-{scale}*.{ext}"))
        if paths:
            return paths
    raise FileNotFoundError(f"no {experiment} results in {results}: run "
                            f"`blockllm bench run {experiment}` first")


def main(draw: Callable[[Path, Path], list[Path]], default_results: str) -> None:
    res = Path(sys.argv[1] if len(sys.argv) > 1 else default_results)
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "paper_figures/out")
    for p in draw(res, out):
        print(p)
