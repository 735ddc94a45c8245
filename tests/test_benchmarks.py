"""The benchmarks' own plumbing (what they measure is in results/, not asserted here): the
sampling benchmark writes its table, and the benchmark figures draw from results files."""

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from benchmarks import sampling
from paper_figures import benchmarks as figures

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_sampling_benchmark_writes_its_table_and_both_figures_draw(tmp_path):
    out = tmp_path / "bench_sampling.json"
    res = CliRunner().invoke(sampling.main, ["--logits", "flat", "--batches", "1,4",
                                             "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 4]
    assert all(r["device_batched_ms"] > 0 and r["host_per_row_ms"] > 0 for r in rows)
    assert "| flat | 4 |" in out.with_suffix(".md").read_text()
    shutil.copy(RESULTS / "bench_serving.json", tmp_path)  # the latest measured run
    paths = figures.draw(tmp_path, tmp_path / "fig")
    assert {p.name for p in paths} == {"bench_serving.png", "bench_serving.pdf",
                                       "bench_serving_runs.png", "bench_serving_runs.pdf",
                                       "bench_sampling.png", "bench_sampling.pdf"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_matmul_layout_benchmark_times_each_path_and_its_figure_draws(tmp_path):
    from benchmarks import matmul_layout
    out = tmp_path / "bench_matmul_layout.json"
    res = CliRunner().invoke(matmul_layout.main, ["--preset", "tiny", "--rows", "1,8",
                                                  "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    shapes, layers = matmul_layout.layer_shapes("tiny")
    assert r["layers"] == layers and r["weight_bytes"] == 4 * layers * sum(
        o * i for o, i in shapes)
    assert [x["rows"] for x in r["rows"]] == [1, 8]
    assert all(x["mkl_ms"] > 0 and x["packed_ms"] > 0 and x["onednn_plain_ms"] > 0
               for x in r["rows"])
    from blockllm.kernels import skinny_linear
    assert all((x["skinny_ms"] is None) == (skinny_linear() is None) for x in r["rows"])
    paths = figures.matmul_layout(out, tmp_path / "fig")
    assert {p.name for p in paths} == {"bench_matmul_layout.png", "bench_matmul_layout.pdf"}


def test_engine_decode_benchmark_keeps_the_tokens_across_settings(tmp_path, monkeypatch):
    """skinny_rows 1 sends the 2-row decode steps to MKL, 32 to the skinny kernel; fused off
    runs them layer by layer in Python; packed on builds an engine on oneDNN's packed weights
    (no native decode calls): the benchmark fails if the greedy tokens differ."""
    import pytest

    from blockllm.kernels import skinny_linear
    if skinny_linear() is None:
        pytest.skip("the skinny kernel needs AVX-512 or AVX2")
    from benchmarks import engine_decode
    from blockllm.models import fused_decode, llama
    from blockllm.runtime import hosts
    packable, kernel, native_calls = hosts.packable, fused_decode.decode_layers(), []
    monkeypatch.setattr(fused_decode, "decode_layers",
                        lambda: lambda *a: native_calls.append(1) or kernel(*a))
    for knob, values in (("skinny_rows", "1,32"), ("fused", "off,on"), ("packed", "on")):
        native_calls.clear()
        out = tmp_path / f"{knob}.json"
        res = CliRunner().invoke(engine_decode.main, ["--knob", knob, "--values", values,
                                                      "--batches", "2", "--tokens", "3",
                                                      "--out", str(out)])
        assert res.exit_code == 0, res.output
        [row] = json.loads(out.read_text())["rows"]
        assert row["requests"] == 2 and all(s > 0 for s in row["seconds"].values())
        if knob == "fused":
            assert native_calls, "fused=on ran the native path"
        if knob == "packed":
            assert not native_calls, "packed weights take the Python path"
    assert llama.SKINNY_ROWS == 32 and fused_decode.ENABLED and hosts.packable is packable, \
        "the defaults are restored"


def test_replay_benchmark_alternates_engines_on_one_trace_and_its_figure_draws(zoo4, tmp_path):
    from benchmarks import replay
    zoo, _ = zoo4
    out = tmp_path / "bench_replay-wave_order.json"
    args = ["--field", "wave_order", "--values", "chain,cycle", "--rate", "50", "--requests",
            "4", "--rounds", "2", "--models", "base,ft", "--zoo", str(zoo.root),
            "--prompt-len", "8", "--max-tokens", "3", "--out", str(out)]
    res = CliRunner().invoke(replay.main, args)
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["round"], r["value"]) for r in rows] == [
        (0, "chain"), (0, "cycle"), (1, "cycle"), (1, "chain")]
    assert all(r["e2e_p95"] >= r["e2e_p50"] >= r["ttft_p50"] > 0 for r in rows)
    assert "cycle / chain" in out.with_suffix(".md").read_text()
    paths = figures.replay(out, tmp_path / "fig")
    assert {p.name for p in paths} == {"bench_replay-wave_order.png",
                                       "bench_replay-wave_order.pdf"}
    bad = CliRunner().invoke(replay.main, [*args[:2], "--values", "chain,spiral"])
    assert bad.exit_code != 0 and "wave_order is cycle or chain" in bad.output
    bad = CliRunner().invoke(replay.main, ["--field", "warp", "--values", "1"])
    assert bad.exit_code != 0 and "no field 'warp'" in bad.output
