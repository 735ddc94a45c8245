"""The embedded SmolLM2-135M-Instruct: our blocks vs transformers on the same fp32 weights."""

import pytest
import torch

from baselines.hf_reference import hf_greedy, hf_model
from blockllm.models.chain import ChainModel
from blockllm.zoo.partition import partition

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land"]


@pytest.fixture(scope="module")
def pair(embedded_source):
    blocks, chain = partition(embedded_source)
    byid = {b.id: b for b in blocks}
    ours = ChainModel(embedded_source.config, [(byid[e.block], None) for e in chain])
    return ours, hf_model(embedded_source), embedded_source.load_tokenizer()


def test_gguf_weights_equal_transformers_gguf_loader(embedded_source):
    """Our GGUF dequantization + q/k unpermute == transformers' own GGUF loading."""
    from transformers import AutoModelForCausalLM

    from blockllm.loaders.embedded import embedded_gguf_path
    path = embedded_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                               dtype=torch.float32).state_dict()
    for name, t in embedded_source.tensors.items():
        assert torch.equal(t, ref[name]), name


def test_greedy_64_tokens_match_generate(pair):
    ours, ref, tok = pair
    for text in PROMPTS:
        ids = tok.encode(text)
        assert ours.generate([ids], 64, stop_ids=())[0] == hf_greedy(ref, ids, 64), text


def test_chat_prompt_logits_close(pair):
    ours, ref, tok = pair
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                  tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours.prompt_logits(ids), theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["packed", "fused", "skinny", "mkl"])
def test_engine_batch_matches_generate(pair, embedded_source, tmp_path, layout, monkeypatch):
    """The serving engine on SmolLM2 (segments, the three prompts in one batch): transformers'
    greedy tokens, with each CPU path: weights in oneDNN's layout (as served where the skinny
    kernel is not built); plain, each decode step through every layer in one native call (as
    served on AVX-512 and AVX2); plain, layer by layer in Python with the skinny kernel for
    decode rows;
    plain through F.linear alone."""
    from blockllm.kernels import skinny_linear
    from blockllm.models import chain, fused_decode, llama
    from blockllm.runtime.config import EngineConfig
    from blockllm.runtime.engine import Engine
    from blockllm.zoo.ingest import add_source
    from blockllm.zoo.store import Zoo
    if layout in ("fused", "skinny") and skinny_linear() is None:
        pytest.skip("skinny_linear not built with AVX-512 or AVX2 here")
    calls = []
    if layout == "fused":  # the default config
        kernel = fused_decode.decode_layers()
        monkeypatch.setattr(fused_decode, "decode_layers",
                            lambda: lambda x, *a: calls.append(len(x)) or kernel(x, *a))
        assert not chain.packable("cpu", torch.float32)
    if layout in ("skinny", "mkl"):
        monkeypatch.setattr(fused_decode, "ENABLED", False)
    if layout == "skinny":
        kernel = skinny_linear()
        monkeypatch.setattr(llama, "skinny_linear",
                            lambda: lambda x, w: calls.append(len(x)) or kernel(x, w))
    if layout == "packed":
        monkeypatch.setattr(chain, "skinny_linear", lambda: None)
        assert chain.packable("cpu", torch.float32)
    if layout == "mkl":
        monkeypatch.setattr(llama, "skinny_linear", lambda: None)
    _, ref, tok = pair
    zoo = Zoo(tmp_path / "zoo")
    add_source(zoo, embedded_source, "m")
    eng = Engine(zoo, ["m"], EngineConfig(pack_weights=layout != "mkl"))
    assert [h.packs for h in eng.hosts] == [layout == "packed"]
    prompts = [tok.encode(t) for t in PROMPTS]
    got = eng.generate("m", prompts, 32, stop_ids=frozenset())
    assert got == [hf_greedy(ref, ids, 32) for ids in prompts]
    if layout == "fused":  # every decode step of the one segment was one call (and the
        assert calls.count(len(PROMPTS)) >= 31  # engine's warm-up made some of its own)
    if layout == "skinny":  # every decode step's matmuls went through the kernel
        assert len(calls) >= 31 * 30 * 4  # at least 31 steps x 30 layers x 4 matmuls


def test_serve_without_models_serves_the_embedded_model_to_the_openai_client(pair, tmp_path):
    """A newcomer's first command: `blockllm serve` on an empty zoo adds the embedded SmolLM2
    as `smollm2` and answers the official openai client with transformers' greedy tokens."""
    from openai import OpenAI

    from blockllm.zoo.store import Zoo
    from experiments.server_proc import server_process
    _, ref, tok = pair
    zoo_dir = tmp_path / "empty-zoo"
    with server_process(["-m", "blockllm.cli", "serve", "--zoo", str(zoo_dir)],
                        timeout_s=300) as (url, _):
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        assert [m.id for m in client.models.list().data] == ["smollm2"]
        out = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=12,
                                        temperature=0)
    ids = tok.encode(PROMPTS[0])
    want = hf_greedy(ref, ids, 12)
    eos = tok.eos_token_id
    want = want[:want.index(eos)] if eos in want else want
    assert out.choices[0].text == tok.decode(want)
    assert Zoo(zoo_dir).models() == ["smollm2"]
