"""The block zoo: dedup, byte accounting, verification, crash safety, rm and gc."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from blockllm.zoo.ingest import add_source, chain_model
from blockllm.zoo.partition import partition
from blockllm.zoo.store import CorruptBlock, Zoo, ZooError
from tests.conftest import tiny_source

MID = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=6, vocab_size=1024)


def partial_finetune(src, top: int, seed: int):
    """A copy of src whose top `top` decoder layers are perturbed (the rest byte-identical)."""
    g = torch.Generator().manual_seed(seed)
    n = src.config.num_hidden_layers
    tensors = {}
    for k, v in src.tensors.items():
        parts = k.split(".")
        if parts[:2] == ["model", "layers"] and int(parts[2]) >= n - top:
            v = v + 0.01 * torch.randn(v.shape, generator=g)
        tensors[k] = v
    return type(src)(config=src.config, tensors=tensors, origin=f"{src.origin}+ft{seed}",
                     tokenizer_loader=src.tokenizer_loader)


def test_identical_layers_get_identical_ids_anywhere():
    src = tiny_source(seed=0)
    t = dict(src.tensors)
    for name in list(t):  # make layer 2 a copy of layer 0
        if name.startswith("model.layers.0."):
            t[name.replace("layers.0.", "layers.2.")] = t[name]
    blocks, chain = partition(type(src)(src.config, t, "x"))
    assert chain[1].block == chain[3].block and chain[1].block != chain[2].block
    two = partition(type(src)(src.config, t, "x"), layers_per_block=2)[1]
    assert len(two) == 4  # embed, layers 0-1, layer 2, head


def test_dtype_and_signature_change_the_id():
    src = tiny_source(seed=0)
    a = partition(src)[1][1].block
    bf = type(src)(src.config, {k: v.bfloat16() for k, v in src.tensors.items()}, "x")
    assert partition(bf)[1][1].block != a
    other = tiny_source(seed=0, rope_theta=500000.0)
    assert partition(other)[1][1].block != a, "same bytes, different RoPE: different block"
    assert partition(other)[1][0].block == partition(src)[1][0].block, "embedding unaffected"


def test_partial_finetunes_store_frozen_layers_once(tmp_path):
    zoo = Zoo(tmp_path / "zoo")
    base = tiny_source(seed=0, **MID)
    add_source(zoo, base, "base")
    add_source(zoo, partial_finetune(base, 2, seed=1), "ft-a")
    new = add_source(zoo, partial_finetune(base, 2, seed=2), "ft-b")
    assert len(new) == 2, "only the 2 retrained layers are new"
    s = zoo.stats()
    layer = partition(base)[0][1].nbytes
    embed = base.tensors["model.embed_tokens.weight"].numel() * 4
    head = embed + 256 * 4
    assert s.unique_bytes == embed + head + (6 + 2 + 2) * layer
    assert s.logical_bytes == 3 * (embed + head + 6 * layer)
    assert s.disk_bytes <= 1.02 * s.unique_bytes, "on disk within 2% of the unique-bytes bound"
    assert s.disk_bytes >= s.unique_bytes
    # the model read back from the zoo is the model that went in
    logits = chain_model(zoo, "ft-a").prompt_logits([5, 6, 7])
    from tests.test_parity_tiny import chain_of
    ft = partial_finetune(base, 2, seed=1)
    torch.testing.assert_close(logits, chain_of(ft).prompt_logits([5, 6, 7]), rtol=0, atol=0)


def test_flipped_byte_is_caught_and_named(tmp_path):
    zoo = Zoo(tmp_path / "zoo")
    src = tiny_source(seed=0)
    add_source(zoo, src, "m")
    victim = zoo.chain("m")[2].block
    path = zoo.block_path(victim)
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    problems = zoo.verify()
    assert len(problems) == 1 and victim[:12] in problems[0] and "used by: m" in problems[0]
    with pytest.raises(CorruptBlock, match=victim[:12]):
        chain_model(zoo, "m")
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptBlock, match="cannot be read"):
        zoo.load_block(victim)


def test_duplicate_names_rm_and_gc(tmp_path):
    zoo = Zoo(tmp_path / "zoo")
    base = tiny_source(seed=0)
    add_source(zoo, base, "base")
    add_source(zoo, partial_finetune(base, 1, seed=3), "ft")
    with pytest.raises(ZooError, match="already in the zoo"):
        add_source(zoo, base, "base")
    with pytest.raises(ZooError, match="no model 'nope'"):
        zoo.chain("nope")
    before = zoo.stats()
    zoo.remove_model("ft")
    assert zoo.models() == ["base"]
    n, freed = zoo.gc()
    assert n == 1 and freed > 0
    after = zoo.stats()
    assert after.distinct_blocks == before.distinct_blocks - 1
    assert zoo.verify() == []
    assert zoo.gc() == (0, 0)


def _snapshot(zoo: Zoo):
    return zoo.models(), zoo.stats(), sorted(p.name for p in zoo.root.rglob("*.safetensors"))


@pytest.mark.parametrize("point", ["staged", "publishing", "published"])
def test_killed_add_leaves_zoo_as_it_was(tmp_path, point):
    root = tmp_path / "zoo"
    zoo = Zoo(root)
    add_source(zoo, tiny_source(seed=0), "base")
    models, stats, files = _snapshot(zoo)
    flag = tmp_path / "paused"
    env = dict(os.environ, BLOCKLLM_FAULT=f"{point}:{flag}")
    proc = subprocess.Popen([sys.executable, "-m", "blockllm.cli", "zoo", "add", "dummy:tiny@9",
                             "--name", "victim", "--zoo", str(root)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None, "the add finished before the fault point"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    zoo = Zoo(root)
    assert zoo.models() == models, "the manifest is as it was"
    assert zoo.stats().unique_bytes == stats.unique_bytes
    if point != "staged":
        assert zoo.orphan_files(), "the kill left unreferenced block files..."
    with zoo.writing():
        pass  # ...which the next writer removes first
    assert _snapshot(zoo) == (models, stats, files)
    assert zoo.verify() == []
    add_source(zoo, tiny_source(seed=9), "victim")  # and the add can simply be redone
    assert "victim" in zoo.models()


def test_killed_gc_leaves_a_consistent_zoo(tmp_path):
    root = tmp_path / "zoo"
    zoo = Zoo(root)
    add_source(zoo, tiny_source(seed=0), "base")
    add_source(zoo, tiny_source(seed=9), "gone")
    zoo.remove_model("gone")
    flag = tmp_path / "paused"
    env = dict(os.environ, BLOCKLLM_FAULT=f"gc:{flag}")
    proc = subprocess.Popen([sys.executable, "-m", "blockllm.cli", "zoo", "gc", "--zoo",
                             str(root)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # rows deleted, files not yet
    proc.wait()
    zoo = Zoo(root)
    assert zoo.models() == ["base"] and zoo.orphan_files()
    problems = zoo.verify()
    assert problems and all(p.startswith("unreferenced file") for p in problems), \
        "every block a chain uses is intact; only the orphans are reported"
    with zoo.writing():
        pass  # the next writer removes the orphans
    assert zoo.orphan_files() == [] and zoo.verify() == []


def four_model_zoo(root):
    """base + a partial fine-tune + a LoRA variant + an unrelated tied model: shared blocks."""
    from blockllm.zoo.ingest import add
    from tests.test_lora import make_adapter_dir
    zoo = Zoo(root / "zoo")
    base = tiny_source(seed=0)
    add_source(zoo, base, "base")
    add_source(zoo, partial_finetune(base, 1, seed=5), "ft")
    add(zoo, str(make_adapter_dir(base, root / "lora", seed=2)), "lora", base="base")
    add_source(zoo, tiny_source(seed=9, tie_word_embeddings=True), "other")
    return zoo
