"""Where the engine hands a step's matmuls from the skinny kernel to MKL (`SKINNY_ROWS`), seen
from the serving engine: N requests decoded at once on the embedded SmolLM2 (every decode
step has N rows), with the limit at each candidate value, alternating, in one process.

    python -m benchmarks.skinny_rows [--batches 8,24,32] [--limits 16,32] [--tokens 32]
                                     [--out results/bench_skinny_rows.json]

Seconds to generate `tokens` tokens for every request (prefill included, best of 3 rounds);
the greedy tokens must be the same under every limit. `benchmarks.matmul_layout` has the
matmuls alone.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
from tqdm import tqdm

from benchmarks.test_decode import PROMPT, _engine
from blockllm.kernels import SKINNY_ROWS, skinny_linear
from blockllm.loaders import load_source
from blockllm.models import llama


@click.command()
@click.option("--batches", default="8,24,32", show_default=True)
@click.option("--limits", default="16,32", show_default=True)
@click.option("--tokens", default=32, show_default=True)
@click.option("--out", default="results/bench_skinny_rows.json", show_default=True)
def main(batches: str, limits: str, tokens: int, out: str) -> None:
    if skinny_linear() is None:
        raise click.ClickException("the skinny kernel is not built here (needs AVX-512)")
    src = load_source("embedded")
    tok = src.load_tokenizer()
    eng = _engine(src, Path(tempfile.mkdtemp()))
    caps = [int(v) for v in limits.split(",")]
    rows = []
    try:
        for n in tqdm([int(b) for b in batches.split(",")], desc="batches"):
            prompts = [tok.encode(f"{PROMPT}, part {i}") for i in range(n)]
            times: dict[int, list[float]] = {c: [] for c in caps}
            want = None
            for _ in range(3):
                for cap in caps:
                    llama.SKINNY_ROWS = cap
                    t = time.perf_counter()
                    got = eng.generate("m", prompts, tokens, stop_ids=frozenset())
                    times[cap].append(time.perf_counter() - t)
                    want = want or got
                    assert got == want, f"tokens changed with SKINNY_ROWS={cap}"
            rows.append({"requests": n, **{f"s_at_{c}": min(times[c]) for c in caps}})
    finally:
        llama.SKINNY_ROWS = SKINNY_ROWS
        eng.close()
    Path(out).write_text(json.dumps({"tokens": tokens, "limits": caps, "default": SKINNY_ROWS,
                                     "rows": rows}, indent=1))
    lines = ["# SKINNY_ROWS in the engine", "", "`python -m benchmarks.skinny_rows`: "
             f"{tokens} tokens per request, all decoded together, best of 3; same tokens "
             f"under every limit (default {SKINNY_ROWS})", "",
             "| requests | " + " | ".join(f"limit {c} (s)" for c in caps) + " | last / first |",
             "|---|" + "---|" * (len(caps) + 1)]
    for r in rows:
        t = [r[f"s_at_{c}"] for c in caps]
        lines.append(f"| {r['requests']} | " + " | ".join(f"{v:.2f}" for v in t) +
                     f" | {t[-1] / t[0]:.2f} |")
    Path(out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
