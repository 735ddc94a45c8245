"""`zoo export` round trip: transformers (and peft) on the exported directory give the same greedy
tokens as blockllm on the zoo chain, for a base, a partial fine-tune, a LoRA model (as base +
peft adapter, and merged) and a tied model."""

import json
import subprocess
import sys

import pytest
import torch

from baselines.hf_reference import hf_greedy
from blockllm.zoo.export import export_dir
from blockllm.zoo.ingest import chain_model
from blockllm.zoo.store import ZooError
from tests.conftest import ENGINE_PROMPTS
from tests.test_zoo import four_model_zoo

N = 16


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return four_model_zoo(tmp_path_factory.mktemp("export"))


def _hf(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()


def _ours(zoo, name):
    m = chain_model(zoo, name)
    return [m.generate([p], N, stop_ids=())[0] for p in ENGINE_PROMPTS]


@pytest.mark.parametrize("name", ["base", "ft", "other"])
def test_whole_model_export_gives_our_tokens(zoo, name, tmp_path):
    e = export_dir(zoo, name, tmp_path / name)
    assert e.adapter_dir is None
    cfg = json.loads((e.model_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["torch_dtype"] == "float32"
    model = _hf(e.model_dir)
    assert [hf_greedy(model, p, N) for p in ENGINE_PROMPTS] == _ours(zoo, name)


def test_lora_exports_as_base_plus_peft_adapter(zoo, tmp_path):
    from peft import PeftModel
    e = export_dir(zoo, "lora", tmp_path / "lora")
    assert e.model_dir == tmp_path / "lora" / "base" and e.adapter_dir is not None
    # the base directory is the base model's chain: the same tokens as the zoo's "base"
    base = _hf(e.model_dir)
    assert [hf_greedy(base, p, N) for p in ENGINE_PROMPTS] == _ours(zoo, "base")
    model = PeftModel.from_pretrained(_hf(e.model_dir), str(e.adapter_dir)).eval()
    want = _ours(zoo, "lora")
    assert want != _ours(zoo, "base"), "the adapter must change the tokens"
    assert [hf_greedy(model, p, N) for p in ENGINE_PROMPTS] == want
    merged = export_dir(zoo, "lora", tmp_path / "merged", merge=True)
    assert merged.adapter_dir is None
    assert [hf_greedy(_hf(merged.model_dir), p, N) for p in ENGINE_PROMPTS] == want


def test_export_refuses_a_non_empty_directory(zoo, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("user data")
    with pytest.raises(ZooError, match="not an empty directory"):
        export_dir(zoo, "base", tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "user data"


def test_cli_export(zoo, tmp_path):
    def run(*a):
        return subprocess.run([sys.executable, "-m", "blockllm.cli", "zoo", "export", *a,
                               "--zoo", str(zoo.root)], capture_output=True, text=True)
    ok = run("lora", "--out", str(tmp_path / "e"))
    assert ok.returncode == 0, ok.stderr
    assert "peft adapter" in ok.stdout and (tmp_path / "e" / "adapter").is_dir()
    bad = run("nope", "--out", str(tmp_path / "f"))
    assert bad.returncode != 0 and "no model 'nope'" in bad.stderr


@pytest.mark.slow
def test_embedded_export_has_tokenizer_and_chat_template(tmp_path, embedded_source):
    from transformers import AutoTokenizer

    from blockllm.zoo.ingest import add_source
    from blockllm.zoo.store import Zoo
    z = Zoo(tmp_path / "zoo")
    add_source(z, embedded_source, "smollm2")
    e = export_dir(z, "smollm2", tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(str(e.model_dir))
    ours = z.tokenizer("smollm2")
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        ours.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok.encode("The capital of France is")
    assert hf_greedy(_hf(e.model_dir), ids, 8) == \
        chain_model(z, "smollm2").generate([ids], 8, stop_ids=())[0]
