"""Variants figure: each variant's task score vs the base, and the zoo's storage vs storing whole.

    python -m paper_figures.variants [results/variants.json] [paper_figures/out]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def draw(results: Path, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    data = json.loads(results.read_text())
    rows = pd.DataFrame(data["rows"])
    scores = pd.concat([
        rows.assign(model="base", value=rows["base_score"]),
        rows.assign(model="variant", value=rows["score"]),
    ])
    scores["label"] = scores["variant"].str.split("-", n=1).str[1] + "\n(" + scores["kind"] + ")"
    st = data["storage"]["stats"]
    storage = pd.DataFrame({
        "layout": ["models whole", "zoo bound\n(unique bytes)", "zoo on disk"],
        "GiB": [st["logical_bytes"] / 2**30, st["unique_bytes"] / 2**30, st["disk_bytes"] / 2**30],
    })
    sns.set_theme(style="whitegrid")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), width_ratios=[3, 2])
    sns.barplot(scores, x="label", y="value", hue="model", ax=ax1)
    ax1.set(xlabel="", ylabel="accuracy on held-out examples (%)",
            title=f"Variants vs base on their own task (n={int(rows['n_eval'].iloc[0])})")
    sns.barplot(storage, x="layout", y="GiB", ax=ax2, color="C2")
    ax2.set(xlabel="", title=f"Storage of {st['models']} models")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"variants.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


if __name__ == "__main__":
    res = Path(sys.argv[1] if len(sys.argv) > 1 else "results/variants.json")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "paper_figures/out")
    for p in draw(res, out):
        print(p)
