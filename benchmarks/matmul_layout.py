"""CPU matmuls of a model's decoder layers, per number of rows, by each path the engine has:
plain weights through F.linear (MKL) and through oneDNN, oneDNN's packed layout
(`models.llama.pack_weight`), and the native skinny kernel (kernels/linear_ops.cpp, AVX-512
and AVX2 builds; up to 64 rows).

    python -m benchmarks.matmul_layout [--preset smollm2-135m] [--rows 1,2,4,8,16,24,32,48,64,128]
                                       [--out results/bench_matmul_layout.json]

Every layer's four fused matmuls (q/k/v, o, gate/up, down), random fp32 weights of the
preset's shapes, as many layers as the model has (so the weights stream from memory as in
serving); milliseconds for all of them, median of 7 after 2 warm-ups, and the bandwidth
bound (their bytes at the measured read bandwidth: a float32 sum over 1 GiB, as `make
bench`; `experiments.gpu_decode.read_bandwidth`). Which path wins depends on the CPU (an AMD
EPYC and an Intel Xeon differ); the engine takes the skinny kernel for up to SKINNY_ROWS rows
where the kernel is built, and beyond MKL (AVX-512) or oneDNN on plain weights (AVX2: the
`plain_onednn` rule), else packed weights (`models.chain.packable`).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from tqdm import tqdm

from blockllm.kernels import SKINNY_ROWS, skinny_linear
from blockllm.loaders.dummy import preset_config
from blockllm.models.llama import linear, onednn_linear, pack_weight
from experiments.gpu_decode import read_bandwidth


def layer_shapes(preset: str) -> tuple[list[tuple[int, int]], int]:
    """(out, in) of a layer's fused matmuls, and the number of layers."""
    c = preset_config(preset)
    h, d = c.hidden_size, c.head_dim
    qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * d
    return [(qkv, h), (h, c.num_attention_heads * d), (2 * c.intermediate_size, h),
            (h, c.intermediate_size)], c.num_hidden_layers


def time_ms(weights: list[torch.Tensor], xs: dict[int, torch.Tensor], in_of: list[int],
            reps: int = 7, fn=F.linear) -> float:
    def once() -> float:
        t = time.perf_counter()
        for w, n_in in zip(weights, in_of, strict=True):
            fn(xs[n_in], w)
        return time.perf_counter() - t
    once(), once()
    return 1e3 * statistics.median(once() for _ in range(reps))


@click.command()
@click.option("--preset", default="smollm2-135m", show_default=True)
@click.option("--rows", default="1,2,4,8,16,24,32,48,64,128", show_default=True)
@click.option("--out", default="results/bench_matmul_layout.json", show_default=True)
def main(preset: str, rows: str, out: str) -> None:
    torch.manual_seed(0)
    shapes, n_layers = layer_shapes(preset)
    plain = [torch.randn(o, i) for _ in range(n_layers) for o, i in shapes]
    packed = [pack_weight(w) for w in plain]
    in_of = [w.shape[1] for w in plain]
    kernel = skinny_linear()  # None: not built with AVX-512 or AVX2 here
    nbytes = sum(w.numel() * w.element_size() for w in plain)
    bw = read_bandwidth("cpu", gib=1.0, reps=10, dtype=torch.float32)["sum"]
    table = []
    for m in tqdm([int(r) for r in rows.split(",")], desc="rows"):
        xs = {i: torch.randn(m, i) for i in set(in_of)}
        mkl, onednn = time_ms(plain, xs, in_of), time_ms(packed, xs, in_of, fn=linear)
        plain_dnn = time_ms(plain, xs, in_of, fn=onednn_linear)
        skinny = time_ms(plain, xs, in_of, fn=kernel) if kernel and m <= 64 else None
        table.append({"rows": m, "mkl_ms": mkl, "onednn_plain_ms": plain_dnn,
                      "packed_ms": onednn, "skinny_ms": skinny,
                      "bound_ms": 1e3 * nbytes / bw})
    report = {"cpu": platform.processor() or platform.machine(), "cpu_model": _cpu_model(),
              "threads": torch.get_num_threads(), "preset": preset, "layers": n_layers,
              "skinny_isa": torch.ops.blockllm.skinny_linear_isa() if kernel else None,
              "weight_bytes": nbytes, "read_GBps": bw / 1e9, "skinny_rows": SKINNY_ROWS,
              "rows": table}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1))
    lines = [f"# matmul layout ({report['cpu_model']}, {report['threads']} threads, {preset}, "
             f"{n_layers} layers, {nbytes / 1e6:.0f} MB fp32, read {bw / 1e9:.1f} GB/s)", "",
             "`python -m benchmarks.matmul_layout`", "",
             "| rows | F.linear (MKL) ms | oneDNN plain ms | oneDNN packed ms | "
             f"skinny kernel ({report['skinny_isa']}) ms | best / bound |",
             "|---|---|---|---|---|---|"]
    for r in table:
        times = [t for t in (r["mkl_ms"], r["onednn_plain_ms"], r["packed_ms"], r["skinny_ms"])
                 if t is not None]
        skinny = "n/a" if r["skinny_ms"] is None else f"{r['skinny_ms']:.1f}"
        lines.append(f"| {r['rows']} | {r['mkl_ms']:.1f} | {r['onednn_plain_ms']:.1f} | "
                     f"{r['packed_ms']:.1f} | {skinny} | "
                     f"{min(times) / r['bound_ms']:.2f} |")
    lines += ["", f"bound: the weights' {nbytes / 1e6:.0f} MB read once at {bw / 1e9:.1f} GB/s "
              f"= {1e3 * nbytes / bw:.1f} ms. The engine takes the skinny kernel up to "
              f"{SKINNY_ROWS} rows where it is built; beyond, MKL on AVX-512 CPUs and oneDNN on "
              "plain weights on AVX2-only ones."]
    Path(out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()
