"""A GGUF file (llama.cpp's format), dequantized to float tensors with transformers' names.

llama.cpp's converter permutes the rows of q_proj/k_proj (it interleaves RoPE halves); we undo
it exactly as transformers' GGUF loader does, so both load the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from blockllm.loaders.source import ModelSource, SourceError, cast, check_complete
from blockllm.models.config import LlamaConfig

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader) -> LlamaConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise SourceError(f"GGUF architecture {arch!r} is not supported (only llama)")
    p = "llama."
    heads = int(_field(reader, p + "attention.head_count"))
    hidden = int(_field(reader, p + "embedding_length"))
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, p + "vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    hf = {
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, p + "feed_forward_length")),
        "num_hidden_layers": int(_field(reader, p + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, p + "attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, p + "rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(_field(reader, p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_field(reader, p + "context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }
    if _field(reader, p + "rope.scaling.type") not in (None, "none"):
        raise SourceError("GGUF rope scaling is not supported; load the HF directory instead")
    return LlamaConfig.from_hf(hf)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation (rows grouped per head, halves interleaved)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _hf_name(name: str) -> str | None:
    stem, _, suffix = name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    return None


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> ModelSource:
    import gguf
    from gguf.quants import dequantize

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise SourceError(f"{path}: not a readable GGUF file ({e})") from e
    config = gguf_config(reader)
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            continue  # e.g. rope_freqs, which llama3 configs recompute
        arr = dequantize(t.data, t.tensor_type).reshape(tuple(int(s) for s in reversed(t.shape)))
        if name.endswith("self_attn.q_proj.weight"):
            arr = _unpermute(arr, config.num_attention_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            arr = _unpermute(arr, config.num_key_value_heads)
        # a copy: the reader is a read-only memmap
        tensors[name] = torch.from_numpy(np.array(arr, dtype=np.float32))
    check_complete(config, tensors, str(path))
    return ModelSource(config=config, tensors=cast(tensors, dtype), origin=str(path.resolve()),
                       tokenizer_loader=lambda: _tokenizer(path))


def _tokenizer(path: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
