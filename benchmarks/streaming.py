"""The server's text work per streamed token over a long answer: incremental (TextStream) vs
decoding the whole answer at every token (the server before it), SmolLM2's tokenizer.

    python -m benchmarks.streaming [--tokens 1024] [--out results/bench_streaming.json]

Per token: decode, stop-string search, release. Reported: mean seconds per token over the
first and the last 100 tokens, and their ratio (the target: within 1.3x).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from blockllm.server.detokenize import TextStream


def whole_decode(tok, ids, stops):
    """The server's streaming text path before TextStream: decode everything, search all."""
    text = tok.decode(ids, skip_special_tokens=True)
    return min((text.find(s) for s in stops if s in text), default=-1)


def per_token_times(step, n: int, repeats: int) -> list[float]:
    best = [float("inf")] * n
    for _ in range(repeats):
        step_i = step()
        for i in range(n):
            t0 = time.perf_counter()
            step_i(i)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


@click.command()
@click.option("--tokens", default=1024, show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--out", default="results/bench_streaming.json", show_default=True)
def main(tokens, repeats, out):
    from pydoc_data.topics import topics

    from blockllm.loaders import load_source
    tok = load_source("embedded").load_tokenizer()
    ids = tok.encode(" ".join(topics.values()))[:tokens]
    stops = ["\n\nUser:", "</answer>"]

    def incremental():
        s = TextStream(tok, frozenset(), stops)
        return lambda i: s.push(ids[i])

    def whole():
        return lambda i: whole_decode(tok, ids[:i + 1], stops)
    rows = {}
    for name, step in (("incremental", incremental), ("whole decode", whole)):
        t = per_token_times(step, len(ids), repeats)
        first, last = sum(t[:100]) / 100, sum(t[-100:]) / 100
        rows[name] = {"first_100_us": first * 1e6, "last_100_us": last * 1e6,
                      "last_over_first": last / first}
    lines = ["| text path | first 100 tokens (us/token) | last 100 (us/token) | last / first |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {r['first_100_us']:.1f} | {r['last_100_us']:.1f} | "
              f"{r['last_over_first']:.2f}x |" for k, r in rows.items()]
    text = (f"# Streaming text work per token (`python -m benchmarks.streaming`, {len(ids)} "
            f"tokens, best of {repeats})\n\n" + "\n".join(lines) + "\n")
    print(text)
    Path(out).write_text(json.dumps({"tokens": len(ids), "repeats": repeats, **rows}, indent=1))
    Path(out).with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
