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
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    bandwidth = None
    for b in data["benchmarks"]:
        if b["group"] == "read-bandwidth":
            bandwidth = b["extra_info"]["bytes"] / b["stats"]["median"]
            continue
        groups[b["group"]][b["params"]["impl"]] = b
    lines = [f"# decode benchmark ({platform.processor() or platform.machine()}, "
             f"{data['machine_info'].get('cpu', {}).get('brand_raw', '')})", "",
             f"Read bandwidth (sum of 1 GiB, median of 10): "
             f"{bandwidth / 1e9:.1f} GB/s." if bandwidth else "Read bandwidth: not measured.",
             "", "| group | transformers (s) | blockllm chain (s) | engine (s) | engine vs "
             "transformers | bound (s) | engine / bound |", "|---|---|---|---|---|---|---|"]
    for g, t in sorted(groups.items()):
        med = {impl: b["stats"]["median"] for impl, b in t.items()}
        info = next(iter(t.values()))["extra_info"]
        bound = info["weight_bytes"] * info["new_tokens"] / bandwidth if bandwidth else None
        eng = med.get("engine")
        lines.append(
            f"| {g} | {med['transformers']:.3f} | {med['blockllm']:.3f} | "
            + (f"{eng:.3f} | {med['transformers'] / eng:.2f}x faster" if eng else "- | -")
            + (f" | {bound:.3f} | {eng / bound:.2f}x |" if bound and eng else " | - | - |"))
    lines += ["", "bound: every weight read once per new token at the measured bandwidth "
                  "(the prompt's prefill is in the measured times, not in the bound)."]
    text = "\n".join(lines)
    print(text)
    Path(path).with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/bench_decode.json")
