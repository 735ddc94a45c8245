"""Toy-size smoke run of every experiment config and every figure, against real servers."""

import importlib
import json

import pytest

from experiments.configs import CONFIGS, SERVING
from tests.test_zoo import four_model_zoo


def _check_serving(paths, min_systems=2):
    for p in paths:
        lines = [json.loads(x) for x in p.read_text().splitlines()]
        header = lines[0]["header"]
        assert header["env"]["commit"] is not None and header["trace_config"]["seed"] >= 0
        reqs = [x["request"] for x in lines if "request" in x]
        assert reqs and all(r["status"] == "ok" and r["tokens"] > 0 for r in reqs), reqs
    systems = {json.loads(p.read_text().splitlines()[0])["header"]["system"] for p in paths}
    assert len(systems) >= min_systems, "each point compares systems on one saved trace"


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory):
    """Every experiment run once at toy scale into one results folder (as `make reproduce`)."""
    tmp = tmp_path_factory.mktemp("experiments")
    runs = tmp / "results" / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BLOCKLLM_ZOO", str(tmp / "default-zoo"))
        mp.setenv("BLOCKLLM_CACHE", str(tmp / "cache"))
        zoo = four_model_zoo(tmp)
        paths = {c: importlib.import_module(f"experiments.configs.{c}").run(
            "toy", runs, str(zoo.root), zoo.models()) for c in SERVING}
        paths["scaling"] = importlib.import_module("experiments.configs.scaling").run("toy", runs)
        paths["footprint"] = importlib.import_module("experiments.configs.footprint").run(
            "toy", runs)
        paths["placement"] = importlib.import_module("experiments.configs.placement").run(
            "toy", runs)
        paths["sim_validation"] = importlib.import_module(
            "experiments.configs.sim_validation").run("toy", runs, str(zoo.root), zoo.models())
    return tmp / "results", paths


@pytest.mark.parametrize("config", SERVING + ("scaling",))
def test_serving_experiment_toy_run(toy_results, config):
    results, paths = toy_results
    _check_serving(paths[config], 5 if config == "ablations" else 2)
    assert list((results / "runs" / "traces").glob(f"{config}-toy-*.json")), "traces saved"
    systems = {json.loads(p.read_text().splitlines()[0])["header"]["system"]
               for p in paths[config]}
    if config == "latency_vs_rate":
        assert systems == {"blockllm", "per_model", "hf_generate"}


def test_resume_keeps_finished_runs_and_reruns_a_cut_off_one(toy_results, monkeypatch):
    from blockllm.zoo.store import Zoo
    from experiments.configs import _serving, latency_vs_rate
    results, paths = toy_results
    runs = results / "runs"

    def trace(path):  # the trace a results file replayed: {experiment}-{scale}-{tag}.json
        name = "-".join(path.stem.split("-")[:3]) + ".json"
        return json.loads((runs / "traces" / name).read_text())

    first, cut = paths["latency_vs_rate"][:2]
    assert _serving.complete(first, trace(first))
    cut.write_text("\n".join(cut.read_text().splitlines()[:-2]))  # as if killed mid-way
    assert not _serving.complete(cut, trace(cut))
    before = {p: p.stat().st_mtime_ns for p in paths["latency_vs_rate"]}
    monkeypatch.setattr(_serving, "RESUME", True)
    zoo = results.parent / "zoo"
    with monkeypatch.context() as mp:
        mp.setenv("BLOCKLLM_ZOO", str(results.parent / "default-zoo"))
        mp.setenv("BLOCKLLM_CACHE", str(results.parent / "cache"))
        again = latency_vs_rate.run("toy", runs, str(zoo), Zoo(zoo).models())
    assert again == paths["latency_vs_rate"]
    rerun = {p for p in again if p.stat().st_mtime_ns != before[p]}
    assert rerun == {cut}, "only the cut-off file is run again"
    _check_serving([cut], min_systems=1)


def test_scaling_toy_builds_its_zoo_once(toy_results):
    from blockllm.zoo.store import Zoo
    from experiments.configs import scaling
    results, _ = toy_results
    zoo = Zoo(results / "runs" / "zoos" / "scaling-toy")
    assert zoo.models() == ["base", "v01", "v02", "v03"]
    n_blocks = len({e.block for m in zoo.models() for e in zoo.chain(m)})
    assert n_blocks == len(zoo.chain("base")) + 3  # each variant: one new top layer block
    assert scaling.build_zoo("toy", zoo.root)[1] == zoo.models()  # reused, nothing added


def test_footprint_toy_run(tmp_path):
    from experiments.configs import footprint
    [path] = footprint.run("toy", tmp_path / "r")
    rows = json.loads(path.read_text())["rows"]
    by = {(r["kind"], r["variants"]): r for r in rows}
    base = rows[0]["base_bytes"]
    for n in (1, 2, 3):
        assert by["full", n]["zoo_bytes"] == by["full", n]["per_model_bytes"] == (n + 1) * base
        assert by["partial", n]["zoo_bytes"] < by["partial", n]["per_model_bytes"]
        assert by["lora", n]["zoo_bytes"] < by["partial", n]["zoo_bytes"]


@pytest.mark.slow
def test_accuracy_toy_run(tmp_path):
    from blockllm.variants.build import TINY_RECIPES, make_variants
    from blockllm.zoo.store import Zoo
    from experiments.configs import accuracy
    zoo = Zoo(tmp_path / "zoo")
    make_variants(zoo, "dummy:tiny", "tiny", TINY_RECIPES[:1], n_eval=8,
                  cache=tmp_path / "cache", progress=False)
    [path] = accuracy.run("toy", tmp_path / "r", str(zoo.root), zoo.models())
    data = json.loads(path.read_text())
    labels = {(r["model"], r["label"]) for r in data["rows"]}
    assert {("tiny-sentiment-top1", "exact"), ("tiny-sentiment-top1", "t=0.1")} <= labels


def test_every_config_has_a_toy_scale_and_every_figure_draws(toy_results, tmp_path):
    """The figures of every experiment, drawn by `blockllm figures` from the toy results."""
    from click.testing import CliRunner

    from blockllm.cli import main
    for config in CONFIGS:
        assert "toy" in importlib.import_module(f"experiments.configs.{config}").SCALES
    results, _ = toy_results
    res = CliRunner().invoke(main, ["figures", "--results", str(results), "--out",
                                    str(tmp_path / "fig")])
    assert res.exit_code == 0, res.output
    drawn = {p.stem for p in (tmp_path / "fig").glob("*.png")}
    assert {"latency_vs_rate", "ablations", "scaling", "burstiness", "footprint",
            "placement"} <= drawn
    assert all(p.stat().st_size > 1000 for p in (tmp_path / "fig").iterdir())
    assert "skipped variants" in res.output  # said, not silently missing


def test_placement_toy_compares_the_candidates_and_the_selected_one_per_hop_cost(toy_results):
    _, paths = toy_results
    rows = json.loads(paths["placement"][0].read_text())["rows"]
    assert len({r["requests"] for r in rows}) == 1
    costs = {r["inter_hop_us"] for r in rows}
    assert costs == {100, 1000}
    for cost in costs:
        by = {r["placement"]: r for r in rows if r["inter_hop_us"] == cost}
        assert set(by) == {"locality", "locality-0.4", "round_robin", "random", "selected"}
        for loc in ("locality", "locality-0.4"):
            assert by[loc]["network_hops_per_request"] < \
                by["round_robin"]["network_hops_per_request"]
        chosen = by[by["selected"]["chosen"]]  # the selection is one of the candidates
        assert chosen["e2e_p95"] == by["selected"]["e2e_p95"]


def test_sim_validation_toy_compares_simulated_and_real_quantiles(toy_results):
    _, paths = toy_results
    rows = json.loads(paths["sim_validation"][0].read_text())["rows"]
    assert {r["quantile"] for r in rows} == {"p50", "p95"} and len(rows) == 4  # 2 rates
    assert all(r["real_s"] > 0 and r["sim_s"] > 0 for r in rows)


def test_headline_ablations_give_each_configuration_its_p95_interval(toy_results):
    from experiments.configs.ablations import SYSTEMS
    from experiments.headline import ablation_rows
    results, _ = toy_results
    rows = [r for r in ablation_rows(results / "runs") if r.startswith("| ")][1:]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == list(SYSTEMS)
    for r in rows:  # p95 (lo-hi), the interval around the point
        p95, interval = r.split(" | ")[2].split(" (")
        lo, hi = (float(v) for v in interval.rstrip(")").split("-"))
        assert lo <= float(p95) <= hi


def test_gpu_decode_smoke_runs_on_a_cpu_and_reports_each_mode(tmp_path):
    """experiments/gpu_decode.py (the GPU check, run where a GPU is lent) end to end on a CPU
    with a tiny model: each mode's row, the roofline ratio, the modes' greedy tokens agree."""
    from click.testing import CliRunner

    from experiments.gpu_decode import main
    res = CliRunner().invoke(main, [
        "--device", "cpu", "--preset", "tiny", "--dtype", "float32", "--no-hf",
        "--modes", "uncaptured+torch,eager+torch", "--new-tokens", "6", "--saturate", "3",
        "--bandwidth-gib", "0.125", "--zoo", str(tmp_path / "zoo"), "--out", str(tmp_path),
        "--name", "smoke"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "smoke.json").read_text())
    rows = report["engine"]
    assert [r["mode"] for r in rows] == ["uncaptured+torch", "eager+torch"]
    assert all("error" not in r and r["block_failures"] == 0 for r in rows), rows
    assert all(r["x_roofline"] > 0 and r["tokens_agree_with_first_mode"] == 6 for r in rows)
    assert "batch1_tokens" not in res.output  # the printed summary leaves the token lists out
