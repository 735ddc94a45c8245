"""The serving engine decoding N requests together (every decode step has N rows) on the
embedded SmolLM2, under each setting of one knob, alternating, in one process:

- `skinny_rows`: where a step's matmuls leave the skinny kernel for MKL (models.llama's
  SKINNY_ROWS);
- `fused`: a decode step through every layer of a block in one native call
  (models.fused_decode) or layer by layer in Python;
- `packed`: float32 weights in oneDNN's packed layout (as served where the skinny kernel is
  not built; decode steps then run layer by layer) or plain (the kernel; fused steps): one
  engine per value, built before the rounds.

    python -m benchmarks.engine_decode [--knob skinny_rows] [--values 16,32]
                                       [--batches 1,8,24,32] [--tokens 32]
                                       [--models smollm2,smollm2-upper-lora [--zoo DIR]]

`--models`: zoo models served together, the requests dealt to them in turn (LoRA variants:
steps that mix adapters); by default a zoo of the embedded model alone.

Seconds to generate `tokens` tokens for every request (prefill included, best of 3 rounds),
written to results/bench_engine_decode-KNOB.{json,md}; the greedy tokens must be the same
under every setting. `benchmarks.matmul_layout` has the matmuls alone.
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
from blockllm.models import fused_decode, llama
from blockllm.runtime import hosts

KNOBS = {  # knob -> (module, attribute, parse a value, its default)
    "skinny_rows": (llama, "SKINNY_ROWS", int, SKINNY_ROWS),
    "fused": (fused_decode, "ENABLED", lambda v: v == "on", fused_decode.ENABLED),
    "packed": (hosts, "packable", lambda v: (lambda *_: v == "on"), hosts.packable),
}
REBUILD = {"packed"}  # knobs read when an engine is built: one engine per value


@click.command()
@click.option("--knob", type=click.Choice(sorted(KNOBS)), default="skinny_rows",
              show_default=True)
@click.option("--values", default="16,32", show_default=True, help="fused: off,on")
@click.option("--batches", default="8,24,32", show_default=True)
@click.option("--tokens", default=32, show_default=True)
@click.option("--models", default="", help="zoo models, comma-separated (default: embedded)")
@click.option("--zoo", default=None, help="with --models (default $BLOCKLLM_ZOO or ~/.cache)")
@click.option("--out", default=None, help="default results/bench_engine_decode-KNOB.json")
def main(knob: str, values: str, batches: str, tokens: int, models: str, zoo: str | None,
         out: str | None) -> None:
    if skinny_linear() is None:
        raise click.ClickException("the skinny kernel is not built here (needs AVX-512 or AVX2)")
    module, attr, parse, default = KNOBS[knob]
    settings = values.split(",")
    names = [m for m in models.split(",") if m] or ["m"]
    out_path = Path(out or f"results/bench_engine_decode-{knob}.json")
    src = load_source("embedded")
    tok = src.load_tokenizer()
    engines, rows = {}, []
    try:
        for v in settings if knob in REBUILD else settings[:1]:
            setattr(module, attr, parse(v))  # read while the engine is built
            engines[v] = _engine(src, Path(tempfile.mkdtemp())) if names == ["m"] else \
                _zoo_engine(names, zoo)
        for n in tqdm([int(b) for b in batches.split(",")], desc="batches"):
            prompts = [tok.encode(f"{PROMPT}, part {i}") for i in range(n)]
            times: dict[str, list[float]] = {v: [] for v in settings}
            want = None
            for _ in range(3):
                for v in settings:
                    eng = engines[v if knob in REBUILD else settings[0]]
                    if knob not in REBUILD:
                        setattr(module, attr, parse(v))
                    t = time.perf_counter()
                    got = _generate(eng, names, prompts, tokens)
                    times[v].append(time.perf_counter() - t)
                    want = want or got
                    assert got == want, f"tokens changed with {knob}={v}"
            rows.append({"requests": n, "seconds": {v: min(times[v]) for v in settings}})
    finally:
        setattr(module, attr, default)
        for eng in engines.values():
            eng.close()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"knob": knob, "values": settings, "tokens": tokens,
                                    "default": _shown(default), "rows": rows}, indent=1))
    served = f" --models {models}" if models else ""
    lines = [f"# {knob} in the engine", "",
             f"`python -m benchmarks.engine_decode --knob {knob} --values {values}{served}`: "
             f"{tokens} "
             f"tokens per request, all decoded together, best of 3; the same tokens under "
             f"every setting (default {_shown(default)})", "",
             "| requests | " + " | ".join(f"{knob}={v} (s)" for v in settings) +
             " | last / first |", "|---|" + "---|" * (len(settings) + 1)]
    for r in rows:
        t = [r["seconds"][v] for v in settings]
        lines.append(f"| {r['requests']} | " + " | ".join(f"{x:.3f}" for x in t) +
                     f" | {t[-1] / t[0]:.2f} |")
    out_path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


def _zoo_engine(models: list[str], zoo: str | None):
    """The engine serving `models` of a zoo, as `blockllm serve` would, warmed up."""
    from blockllm.runtime.config import EngineConfig
    from blockllm.runtime.engine import Engine
    from blockllm.zoo.disk import default_zoo_dir
    from blockllm.zoo.store import Zoo
    eng = Engine(Zoo(Path(zoo) if zoo else default_zoo_dir()), models, EngineConfig())
    eng.warm_up()
    return eng


def _generate(eng, models: list[str], prompts: list[list[int]], tokens: int) -> list:
    """Every prompt at once, prompt i to models[i % len(models)]; their greedy outputs."""
    from blockllm.models.sampling import SamplingParams
    from blockllm.runtime.request import State
    reqs = [eng.submit(models[i % len(models)], p, SamplingParams(), tokens, frozenset())
            for i, p in enumerate(prompts)]
    while any(r.state is not State.FINISHED for r in reqs):
        eng.step()
    return [r.output for r in reqs]


def _shown(default) -> str:
    return "as the CPU decides" if callable(default) else str(default)


if __name__ == "__main__":
    main()
