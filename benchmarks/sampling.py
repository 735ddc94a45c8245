"""A head batch's token choice: every row sampled on the device in one batched `pick` vs the
engine before it (each sampled row's logits to the host, then a per-request sort and
multinomial with its own generator). Temperature 0.8, top-p 0.95, seeded, on two kinds of
logits: SmolLM2's own next-token logits over a text (`smollm2`, what serving sees) and flat
random ones over its vocabulary (`flat`, the worst case: every nucleus is wide).

    python -m benchmarks.sampling [--device cpu|cuda] [--logits smollm2,flat]
                                  [--batches 1,8,32,64] [--out results/bench_sampling.json]

Reported per batch size: milliseconds per head batch (median of 20), and their ratio.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import tempfile

import click
import torch

from blockllm.models.sampling import Pick, SamplingParams, pick

VOCAB = 49152
PARAMS = SamplingParams(temperature=0.8, top_p=0.95, seed=0)


def host_loop(logits: torch.Tensor, gens: list[torch.Generator]) -> list[int]:
    """The engine's sampled path before device sampling, row by row on the host."""
    out = []
    for row, gen in zip(logits.float().cpu(), gens, strict=True):
        probs = torch.softmax(row / PARAMS.temperature, -1)
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < PARAMS.top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return out


def median_ms(fn, repeats: int = 20) -> float:
    times = []
    for i in range(repeats + 2):
        t = time.perf_counter()
        fn()
        if i >= 2:  # two warm-up calls
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def smollm2_logits(n: int) -> torch.Tensor:
    """SmolLM2's logits at n positions of a text the Python docs ship (its chain, fp32)."""
    from pydoc_data.topics import topics

    from blockllm.zoo.ingest import chain_model, ensure_embedded
    from blockllm.zoo.store import Zoo
    with tempfile.TemporaryDirectory() as d:
        zoo = Zoo(d)
        ensure_embedded(zoo)
        model = chain_model(zoo, "smollm2")
        ids = zoo.tokenizer("smollm2").encode(" ".join(topics.values()))[:n]
        return model.prompt_logits(ids)


@click.command()
@click.option("--device", default="cpu", show_default=True)
@click.option("--logits", "kinds", default="smollm2,flat", show_default=True)
@click.option("--batches", default="1,8,32,64", show_default=True)
@click.option("--out", default="results/bench_sampling.json", show_default=True)
def main(device, kinds, batches, out):
    rows = []
    sizes = [int(b) for b in batches.split(",")]
    real = smollm2_logits(max(sizes)) if "smollm2" in kinds.split(",") else None
    for kind in kinds.split(","):
        for b in sizes:
            logits = (real[:b] if kind == "smollm2" else torch.randn(
                b, VOCAB, generator=torch.Generator().manual_seed(b))).to(device)
            picks = [Pick(PARAMS, step=7) for _ in range(b)]
            gens = [torch.Generator().manual_seed(i) for i in range(b)]
            batched = median_ms(lambda: pick(logits.clone(), picks))  # noqa: B023
            loop = median_ms(lambda: host_loop(logits, gens))  # noqa: B023
            rows.append({"logits": kind, "batch": b, "device_batched_ms": batched,
                         "host_per_row_ms": loop, "speedup": loop / batched})
            print(f"{kind:8s} batch {b:3d}: batched {batched:7.2f} ms, per row on the host "
                  f"{loop:7.2f} ms, {loop / batched:.2f}x")
    Path(out).write_text(json.dumps({"device": device, "threads": torch.get_num_threads(),
                                     "rows": rows}, indent=1))
    md = ["| logits | batch | device, batched (ms) | host, per row (ms) | speedup |",
          "|---|---|---|---|---|"]
    md += [f"| {r['logits']} | {r['batch']} | {r['device_batched_ms']:.2f} | "
           f"{r['host_per_row_ms']:.2f} | "
           f"{r['speedup']:.2f}x |" for r in rows]
    Path(out).with_suffix(".md").write_text(
        f"# Sampling a head batch (`python -m benchmarks.sampling --device {device}`)\n\n"
        + "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
