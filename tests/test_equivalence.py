"""Equivalence metrics, evidence on real (tiny) models, budgets end to end, and stitching."""

import math

import pytest
import torch

from blockllm.zoo.assembly import assemble
from blockllm.zoo.calibration import calibration_set
from blockllm.zoo.equivalence import candidates, compare, evaluate_model, run_entry
from blockllm.zoo.evidence import budget, load_options, set_budget
from blockllm.zoo.ingest import add_source
from blockllm.zoo.partition import partition
from blockllm.zoo.stitch import fit_stitch
from blockllm.zoo.store import Zoo
from tests.conftest import tiny_source


def test_compare_metrics_exactly():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    m = compare(a, a)
    assert (m.cos_mean, m.cos_min, m.rel_l2_mean, m.rel_l2_p95, m.n_tokens) == (1, 1, 0, 0, 3)
    b = torch.tensor([[0.0, 1.0], [0.0, 2.0], [3.0, 4.0]])  # first token orthogonal
    m = compare(a, b)
    assert m.cos_min == pytest.approx(0.0) and m.cos_mean == pytest.approx(2 / 3)
    assert m.rel_l2_mean == pytest.approx(math.sqrt(2) / 3)
    x = torch.tensor([[10.0, 10.0]]).expand(3, 2)
    m = compare(a + x, b + x, residual=x)  # compares updates: same numbers as without x
    assert m.rel_l2_mean == pytest.approx(math.sqrt(2) / 3)
    assert compare(a + x, b + x).rel_l2_mean < 0.1, "without it, the residual hides the change"


def _variant(src, layer, fn):
    t = {k: (fn(v) if k.startswith(f"model.layers.{layer}.") else v)
         for k, v in src.tensors.items()}
    return type(src)(src.config, t, f"{src.origin}+{layer}", tokenizer_loader=src.tokenizer_loader)


@pytest.fixture
def zoo3(tmp_path):
    zoo = Zoo(tmp_path / "zoo")
    base = tiny_source(seed=0, std=0.05)
    g = torch.Generator().manual_seed(0)
    add_source(zoo, base, "base")
    add_source(zoo, _variant(base, 1, lambda v: v + 1e-7 * torch.randn(v.shape, generator=g)),
               "near")
    add_source(zoo, _variant(base, 1, lambda v: v.flatten()[torch.randperm(v.numel(),
               generator=g)].view(v.shape)), "scrambled")
    return zoo


def test_same_block_is_equivalent_with_similarity_one(zoo3):
    src = tiny_source(seed=0, std=0.05)
    blocks, _ = partition(src)
    x = [torch.randn(9, 64), torch.randn(4, 64)]
    a, b = (torch.cat(run_entry(src.config, blocks[2], None, x)) for _ in range(2))
    m = compare(a, b, residual=torch.cat(x))
    assert torch.equal(a, b), "deterministic"
    assert m.cos_min == pytest.approx(1.0, abs=1e-12) and m.rel_l2_mean == 0.0


def test_near_copy_is_equivalent_and_a_scrambled_block_is_not(zoo3):
    calib = calibration_set(zoo3.tokenizer("base"), n_text=2, n_task=2, seq_len=32)
    assert set(candidates(zoo3, "near")) == {2}  # position 2 = decoder layer 1
    ev = {e.candidate.block: e.metrics for e in evaluate_model(zoo3, "near", calib, False)}
    base_block = zoo3.chain("base")[2].block
    scrambled_block = zoo3.chain("scrambled")[2].block
    assert ev[base_block].cos_min > 0.99999 and ev[base_block].rel_l2_mean < 1e-4
    assert ev[scrambled_block].cos_mean < 0.5 and ev[scrambled_block].rel_l2_mean > 0.5


@pytest.mark.slow
def test_budget_gates_what_assembly_may_serve(tmp_path):
    """A trained variant, a threshold loose enough to swap its trained block for the base's:
    the swap is measured, its drop exceeds the budget, and assembly never serves it."""
    from blockllm.variants.build import TINY_RECIPES, make_variants
    from blockllm.zoo import manifest as mf
    from blockllm.zoo.pipeline import run_equivalence
    zoo = Zoo(tmp_path / "zoo")
    make_variants(zoo, "dummy:tiny", "tiny", TINY_RECIPES[:1], n_eval=16,
                  cache=tmp_path / "cache", progress=False)
    name = "tiny-sentiment-top1"
    out = run_equivalence(zoo, [name], thresholds=(1e-6, 1e9), n_eval=16,
                          stitches=[(name, "tiny", 2)], progress=False)
    rows = {r["label"]: r for r in out["rows"]}
    assert rows["t=1e-06"]["substituted"] == 0 and rows["t=1e-06"]["drop_points"] == 0
    loose = rows["t=1e+09"]
    assert loose["substituted"] >= 1 and loose["drop_points"] > budget(zoo, name) == 1.0
    options = load_options(zoo, name)
    sizes = {r.id: r.nbytes for r in mf.all_blocks(zoo.con)}
    resident = frozenset(sizes) - {e.block for e in zoo.chain(name)} | {zoo.chain(name)[0].block}
    triples = [(o.label, o.chain, o.drop_points) for o in options]
    choice = assemble(triples, budget(zoo, name), resident, {}, sizes)
    assert choice.drop_points <= 1.0 and choice.label != "t=1e+09"
    set_budget(zoo, name, 1000.0)  # the user allows it: now the cheaper chain is served
    assert assemble(triples, 1000.0, resident, {}, sizes).load_bytes <= choice.load_bytes
    # the stitch is a zoo block that gc keeps while an option uses it
    st = out["stitch"][0]
    assert st["exact_score"] > 50 and "stitched_score" in st and "swap_score" in st
    stitch_ids = [e.block for o in options if o.label.startswith("stitch") for e in o.chain
                  if zoo.block_info(e.block).kind == "stitch"]
    assert len(stitch_ids) == 1
    zoo.gc()
    zoo.load_block(stitch_ids[0])


def test_fit_stitch_recovers_an_affine_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g)
    w, b = torch.randn(6, 8, generator=g), torch.randn(6, generator=g)
    t = fit_stitch(x, x @ w.T + b, ridge=0.0)
    torch.testing.assert_close(t["proj.weight"], w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(t["proj.bias"], b, rtol=1e-4, atol=1e-4)


def test_equivalence_cli_and_figure(tmp_path):
    """`zoo equivalence` in a real process writes results the figure draws; show lists them."""
    import json
    import subprocess
    import sys
    zoo = tmp_path / "zoo"
    z = Zoo(zoo)
    base = tiny_source(seed=0, std=0.05)
    add_source(z, base, "base")
    add_source(z, _variant(base, 2, lambda v: v * 1.001), "near")
    cmd = [sys.executable, "-m", "blockllm.cli", "zoo"]
    p = subprocess.run(cmd + ["equivalence", "--threshold", "0.01", "--n-eval", "4",
                              "--results", str(tmp_path / "res"), "--zoo", str(zoo)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "res" / "equivalence.json").read_text())
    near = {r["label"]: r for r in data["rows"] if r["model"] == "near"}
    assert near["t=0.01"]["substituted"] == 1 and near["t=0.01"]["saved_bytes"] > 0
    show = subprocess.run(cmd + ["show", "near", "--zoo", str(zoo)], capture_output=True,
                          text=True, timeout=300).stdout
    assert "t=0.01" in show and "allowed" in show
    bad = subprocess.run(cmd + ["budget", "--zoo", str(zoo), "--", "near", "-1"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and ">= 0" in bad.stderr and "Traceback" not in bad.stderr
    from paper_figures.equivalence import draw
    assert all(x.stat().st_size > 1000 for x in draw(tmp_path / "res" / "equivalence.json",
                                                     tmp_path / "fig"))
