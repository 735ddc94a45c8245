"""Toy-size smoke run of every experiment config and its figure, against real servers."""

import importlib
import json

import pytest

from experiments.configs import SERVING
from tests.test_zoo import four_model_zoo


@pytest.mark.parametrize("config", SERVING)
def test_experiment_toy_run_and_figure(tmp_path, config):
    zoo = four_model_zoo(tmp_path)
    mod = importlib.import_module(f"experiments.configs.{config}")
    out = tmp_path / "results"
    paths = mod.run("toy", out, str(zoo.root), zoo.models())
    assert paths
    for p in paths:
        lines = [json.loads(x) for x in p.read_text().splitlines()]
        header = lines[0]["header"]
        assert header["env"]["commit"] is not None and header["trace_config"]["seed"] == 1
        reqs = [x["request"] for x in lines if "request" in x]
        assert reqs and all(r["status"] == "ok" and r["tokens"] > 0 for r in reqs), reqs
    systems = {json.loads(p.read_text().splitlines()[0])["header"]["system"] for p in paths}
    assert len(systems) >= 2, "each point compares systems on one saved trace"
    assert list((out / "traces").glob(f"{config}-*.json")), "the traces are saved"
    fig = importlib.import_module(f"paper_figures.{config}")
    assert all(x.stat().st_size > 1000 for x in fig.draw(out, tmp_path / "fig"))



def test_footprint_toy_run_and_figure(tmp_path):
    from experiments.configs import footprint
    from paper_figures.footprint import draw
    [path] = footprint.run("toy", tmp_path / "r")
    rows = json.loads(path.read_text())["rows"]
    by = {(r["kind"], r["variants"]): r for r in rows}
    base = rows[0]["base_bytes"]
    for n in (1, 2, 3):
        assert by["full", n]["zoo_bytes"] == by["full", n]["per_model_bytes"] == (n + 1) * base
        assert by["partial", n]["zoo_bytes"] < by["partial", n]["per_model_bytes"]
        assert by["lora", n]["zoo_bytes"] < by["partial", n]["zoo_bytes"]
    assert all(x.stat().st_size > 1000 for x in draw(tmp_path / "r", tmp_path / "fig"))
