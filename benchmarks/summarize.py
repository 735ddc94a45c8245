"""Ratios from a pytest-benchmark JSON: transformers time / blockllm time per group (>1: we win).

    python -m benchmarks.summarize results/bench_decode.json
"""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict
from pathlib import Path


def main(path: str) -> None:
    data = json.loads(Path(path).read_text())
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["params"]["impl"]] = b["stats"]["median"]
    lines = [f"# decode benchmark ({platform.processor() or platform.machine()}, "
             f"{data['machine_info'].get('cpu', {}).get('brand_raw', '')})",
             "", "| group | blockllm median (s) | transformers median (s) | speed-up |",
             "|---|---|---|---|"]
    for g, t in sorted(groups.items()):
        lines.append(f"| {g} | {t['blockllm']:.3f} | {t['transformers']:.3f} | "
                     f"{t['transformers'] / t['blockllm']:.2f}x |")
    text = "\n".join(lines)
    print(text)
    Path(path).with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/bench_decode.json")
