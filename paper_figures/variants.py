"""Variants figure: each variant's task score vs the base, and the zoo's storage vs storing whole.

    python -m paper_figures.variants [results/variants.json] [paper_figures/out]
"""

from __future__ import annotations

import json
from pathlib import Path

from paper_figures._save import main, save


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
    return save(fig, out_dir, "variants")


if __name__ == "__main__":
    main(draw, "results/variants.json")
