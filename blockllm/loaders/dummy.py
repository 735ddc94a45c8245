"""Dummy weights of a real architecture's shape, seeded, like vLLM's `--load-format dummy`.

For scale runs where no weights exist: timings and memory are real, outputs are noise.
`dummy:PRESET` names one of PRESETS (or `dummy:PATH/config.json` for any HF Llama config).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from blockllm.loaders.source import ModelSource, SourceError, expected_shapes
from blockllm.models.config import LlamaConfig

_LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                  rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
_LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                  rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192,
                  tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)
_LLAMA31_8B = dict(_LLAMA3_8B, max_position_embeddings=131072, rope_scaling=dict(
    rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=8192))
_SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                     num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                     tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
             rope_theta=10000.0, max_position_embeddings=1024, tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2)

PRESETS: dict[str, dict] = {
    "llama-2-7b": _LLAMA2_7B,
    "llama-3-8b": _LLAMA3_8B,
    "llama-3.1-8b": _LLAMA31_8B,
    "llama-2-13b": dict(_LLAMA2_7B, hidden_size=5120, intermediate_size=13824,
                        num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40),
    "smollm2-135m": _SMOLLM2_135M,
    "tiny": _TINY,
}


def preset_config(name: str) -> LlamaConfig:
    if name in PRESETS:
        return LlamaConfig.from_hf({"model_type": "llama", **PRESETS[name]})
    path = Path(name)
    if path.is_file() and path.suffix == ".json":
        return LlamaConfig.from_hf(json.loads(path.read_text()))
    raise SourceError(f"unknown dummy preset {name!r}; choose one of {', '.join(PRESETS)} "
                      "or pass dummy:PATH/config.json")


def dummy_tensors(cfg: LlamaConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: str = "cpu", std: float = 0.02) -> dict[str, torch.Tensor]:
    """Normal(0, std) matrices and ones for norms; each tensor seeded by (seed, its name)."""
    shapes = expected_shapes(cfg)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            out[name] = torch.ones(shape, dtype=dtype, device=device)
            continue
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        g = torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        out[name] = (torch.randn(shape, generator=g, device=device) * std).to(dtype)
    return out


def load_dummy(preset: str, seed: int = 0, dtype: torch.dtype = torch.float32,
               device: str = "cpu") -> ModelSource:
    cfg = preset_config(preset)
    from blockllm.loaders.tokenizer import ByteTokenizer
    return ModelSource(config=cfg, tensors=dummy_tensors(cfg, seed, dtype, device),
                       origin=f"dummy:{preset}", tokenizer_loader=lambda: ByteTokenizer(cfg),
                       meta={"dummy": True, "seed": seed})
