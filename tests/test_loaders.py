"""Loaders: HF dirs (single and sharded), GGUF, dummy presets, and their error messages."""

import numpy as np
import pytest
import torch

from baselines.hf_reference import hf_model
from blockllm.loaders import SourceError, load_source
from blockllm.loaders.dummy import PRESETS, preset_config
from blockllm.loaders.gguf_file import _unpermute
from tests.conftest import tiny_source


def _save_hf(src, path, **kw):
    hf_model(src).save_pretrained(str(path), safe_serialization=True, **kw)
    src.load_tokenizer().save_pretrained(str(path))


@pytest.mark.parametrize("shard", [None, "60KB"])
def test_hf_dir_roundtrip(tmp_path, shard):
    src = tiny_source(seed=1)
    _save_hf(src, tmp_path, **({"max_shard_size": shard} if shard else {}))
    if shard:
        assert (tmp_path / "model.safetensors.index.json").is_file()
    got = load_source(str(tmp_path))
    assert got.config == src.config
    assert set(got.tensors) == set(src.tensors)
    for k, v in src.tensors.items():
        assert torch.equal(got.tensors[k], v), k


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, verbatim in numpy."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def test_unpermute_inverts_llamacpp_permute():
    w = np.arange(8 * 4 * 3, dtype=np.float32).reshape(8 * 4, 3)
    assert np.array_equal(_unpermute(_llamacpp_permute(w, 4), 4), w)
    assert not np.array_equal(_llamacpp_permute(w, 4), w)


def test_gguf_written_by_gguf_writer_loads_back(tmp_path):
    """A tiny GGUF written the llama.cpp way (permuted q/k, F32) loads to the same tensors."""
    import gguf
    src = tiny_source(seed=2, tie_word_embeddings=True)
    cfg = src.config
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.head_dim)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
             "output_norm.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in src.tensors.items():
        arr = t.numpy()
        if name in names:
            gname = names[name]
        else:
            parts = name.split(".")
            gname = f"blk.{parts[2]}.{layer['.'.join(parts[3:-1])]}.weight"
            if "q_proj" in name:
                arr = _llamacpp_permute(arr, cfg.num_attention_heads)
            elif "k_proj" in name:
                arr = _llamacpp_permute(arr, cfg.num_key_value_heads)
        w.add_tensor(gname, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = load_source(str(path))
    assert got.config.tie_word_embeddings and got.config.num_key_value_heads == 2
    for k, v in src.tensors.items():
        assert torch.equal(got.tensors[k], v), k


def test_dummy_presets_have_real_shapes_and_are_seeded():
    c = preset_config("llama-2-7b")
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size) == (4096, 32, 32000)
    c3 = preset_config("llama-3-8b")
    assert (c3.num_key_value_heads, c3.intermediate_size) == (8, 14336)
    assert preset_config("llama-3.1-8b").rope_scaling.factor == 8.0
    assert {"llama-2-7b", "llama-3-8b", "smollm2-135m", "tiny"} <= set(PRESETS)
    a, b, c = (load_source(s) for s in ("dummy:tiny@1", "dummy:tiny@1", "dummy:tiny@2"))
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k])
    assert not torch.equal(a.tensors["model.embed_tokens.weight"],
                           c.tensors["model.embed_tokens.weight"])


@pytest.mark.parametrize("spec,match", [
    ("/nonexistent/model", "no such file"),
    ("dummy:llama-9000", "unknown dummy preset"),
])
def test_bad_sources_name_the_fix(spec, match):
    with pytest.raises(SourceError, match=match):
        load_source(spec)


def test_bad_files_and_dirs(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(SourceError, match="unknown file format"):
        load_source(str(tmp_path / "weights.bin"))
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(SourceError, match="GGUF"):
        load_source(str(tmp_path / "fake.gguf"))
    with pytest.raises(SourceError, match="config.json"):
        load_source(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(SourceError, match="unsupported model_type"):
        load_source(str(tmp_path))
