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
                                       "bench_sampling.png", "bench_sampling.pdf"}
    assert all(p.stat().st_size > 1000 for p in paths)
