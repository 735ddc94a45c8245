"""LoRA adapters as blocks: our per-block deltas vs peft's merged model, and merging."""

import pytest
import torch

from baselines.hf_reference import hf_greedy, hf_model
from blockllm.loaders.peft_adapter import load_peft_adapter
from blockllm.models.lora import LoraAdapter, LoraSegments, merge_into
from blockllm.zoo.partition import partition
from tests.conftest import tiny_source
from tests.test_parity_tiny import PROMPTS, chain_of


def make_adapter_dir(src, path, targets=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"),
                     r=4, layers=None, seed=0):
    """A real peft adapter dir with non-zero A and B (peft's default B=0 would test nothing)."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0,
                     init_lora_weights=False, layers_to_transform=layers)
    model = get_peft_model(hf_model(src), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.mul_(3.0)  # make the adapter change the output visibly
    model.save_pretrained(str(path))
    return path


@pytest.fixture
def base_and_adapter(tmp_path):
    src = tiny_source(seed=11)
    adapter = load_peft_adapter(make_adapter_dir(src, tmp_path / "lora", layers=[0, 2]))
    src.adapter = adapter
    return src


def test_adapter_blocks_attach_only_where_the_adapter_acts(base_and_adapter):
    blocks, chain = partition(base_and_adapter)
    assert [e.adapter is not None for e in chain] == [False, True, False, True, False]
    base_blocks, base_chain = partition(tiny_source(seed=11))
    assert [e.block for e in chain] == [e.block for e in base_chain], "base blocks are shared"


def test_our_adapter_path_matches_peft_merged(base_and_adapter):
    src = base_and_adapter
    ours = chain_of(src)
    merged = hf_model(src, merge_adapter=True)
    plain = hf_model(src)
    for p in PROMPTS:
        with torch.no_grad():
            want = merged(torch.tensor([p])).logits[0]
            base = plain(torch.tensor([p])).logits[0]
        got = ours.prompt_logits(p)
        assert (want - base).abs().max() > 1e-2, "the adapter must change the logits"
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert ours.generate([p], 24, stop_ids=())[0] == hf_greedy(merged, p, 24)


def test_merge_into_equals_adapter_path(base_and_adapter):
    blocks, chain = partition(base_and_adapter)
    byid = {b.id: b for b in blocks}
    dec, ada = byid[chain[1].block], byid[chain[1].adapter]
    merged = merge_into(dec.tensors, LoraAdapter(ada.tensors, ada.signature["scaling"]))
    x = torch.randn(5, 64)
    w = dec.tensors["layers.0.self_attn.q_proj.weight"]
    a = ada.tensors["layers.0.self_attn.q_proj.lora_A"]
    b = ada.tensors["layers.0.self_attn.q_proj.lora_B"]
    seg = LoraSegments.single(LoraAdapter(ada.tensors, ada.signature["scaling"]), 5)
    y = seg.add_delta(x @ w.T, x, 0, ("self_attn.q_proj",))
    torch.testing.assert_close(y, x @ merged["layers.0.self_attn.q_proj.weight"].T,
                               rtol=1e-5, atol=1e-5)
    assert a.shape == (4, 64) and b.shape == (64, 4)


def test_mixed_adapters_in_one_batch():
    """Rows of two adapters and of none in one batch get exactly their own deltas."""
    x = torch.randn(6, 8)
    w = torch.randn(8, 8)
    ad = [LoraAdapter({"layers.0.m.lora_A": torch.randn(2, 8),
                       "layers.0.m.lora_B": torch.randn(8, 2)}, s) for s in (0.5, 2.0)]
    seg = LoraSegments.per_sequence([ad[0], None, ad[1]], [2, 3, 1])
    y = seg.add_delta(x @ w.T, x, 0, ("m",))
    for rows, a in ((slice(0, 2), ad[0]), (slice(5, 6), ad[1])):
        A, B = a.pair(0, "m")
        torch.testing.assert_close(y[rows], x[rows] @ w.T + a.scaling * x[rows] @ A.T @ B.T)
    torch.testing.assert_close(y[2:5], x[2:5] @ w.T)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_one_delta_for_a_fused_matmul_equals_each_module_s_own(native, monkeypatch):
    """q, k, v (one fused matmul) with an adapter on q and v only, another on k only, rows of
    both and of none interleaved (gathered groups): the joint delta of each adapter equals
    the per-module deltas, and a module no adapter targets is left alone; with the native
    kernel (one op for the batch) and the torch path (a GPU's, or no compiler)."""
    import blockllm.models.lora as lora_mod
    from blockllm.kernels import native as built
    if native:
        if built() is None:
            pytest.skip("the native kernels are not built here (no compiler)")
    else:
        monkeypatch.setattr(lora_mod, "_native", lambda y, x: None)
    g = torch.Generator().manual_seed(0)
    outs = (8, 4, 4)
    mods = ("q", "k", "v")

    def pair(out):
        return torch.randn(2, 8, generator=g), torch.randn(out, 2, generator=g)
    qv = LoraAdapter({f"layers.0.{m}.lora_{ab}": t for m in ("q", "v")
                      for ab, t in zip("AB", pair(outs[mods.index(m)]), strict=True)}, 0.5)
    k = LoraAdapter({f"layers.0.k.lora_{ab}": t for ab, t in zip("AB", pair(4), strict=True)},
                    2.0)
    x = torch.randn(7, 8, generator=g)
    base = torch.randn(7, 16, generator=g)
    adapters, lens = [qv, None, k, qv, k], [2, 1, 1, 2, 1]
    y = LoraSegments.per_sequence(adapters, lens).add_delta(base.clone(), x, 0, mods, outs)
    want = base.clone()
    row = 0
    for a, n in zip(adapters, lens, strict=True):
        col = 0
        for m, w in zip(mods, outs, strict=True):
            p = a.pair(0, m) if a is not None else None
            if p is not None:
                want[row: row + n, col: col + w] += a.scaling * x[row: row + n] @ p[0].T @ p[1].T
            col += w
        row += n
    torch.testing.assert_close(y, want)
    assert qv.joint(0, ("o",), (8,)) is None


def test_zoo_adapter_model_and_its_merge_give_the_same_outputs(tmp_path):
    from blockllm.zoo.ingest import add, add_source, chain_model, merge_adapter
    from blockllm.zoo.store import Zoo, ZooError
    zoo = Zoo(tmp_path / "zoo")
    src = tiny_source(seed=12)
    add_source(zoo, src, "base")
    adir = make_adapter_dir(src, tmp_path / "lora", seed=1)
    with pytest.raises(ZooError, match="--base"):
        add(zoo, str(adir), "x")
    new = add(zoo, str(adir), "lora", base="base")
    assert len(new) == 3, "only the adapter blocks are new"
    assert [e.block for e in zoo.chain("lora")] == [e.block for e in zoo.chain("base")]
    merge_adapter(zoo, "lora", "merged")
    assert not any(e.adapter for e in zoo.chain("merged"))
    p = PROMPTS[0]
    torch.testing.assert_close(chain_model(zoo, "merged").prompt_logits(p),
                               chain_model(zoo, "lora").prompt_logits(p), rtol=1e-5, atol=1e-5)
    with pytest.raises(ZooError, match="no LoRA adapter"):
        merge_adapter(zoo, "base", "m2")
