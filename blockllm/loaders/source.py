"""What every loader returns: an architecture, HF-named tensors, and where the tokenizer lives.

Loaders convert their format to transformers' names (`model.layers.3.mlp.up_proj.weight`, ...);
`blockllm.zoo.partition` is the one place that cuts those into blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from blockllm.errors import UserError
from blockllm.models.config import LlamaConfig


class SourceError(UserError):
    """A model source the user named cannot be loaded; the message says what to do."""


@dataclass
class ModelSource:
    config: LlamaConfig  # the architecture
    tensors: dict[str, torch.Tensor]  # HF names; no lm_head.weight when embeddings are tied
    origin: str  # provenance: the path or spec it came from
    tokenizer_loader: Callable[[], Any] | None = None  # returns a transformers tokenizer
    adapter: LoraSource | None = None  # a LoRA adapter on top of these base tensors
    meta: dict[str, Any] = field(default_factory=dict)  # extra provenance (task, scores, ...)

    def load_tokenizer(self) -> Any:
        if self.tokenizer_loader is None:
            raise SourceError(f"{self.origin} has no tokenizer")
        return self.tokenizer_loader()


@dataclass
class LoraSource:
    """A peft LoRA adapter, already renamed to `model.layers.{i}.{module}.lora_A|lora_B`."""

    tensors: dict[str, torch.Tensor]
    scaling: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rslora
    rank: int
    base_model: str | None  # base_model_name_or_path from adapter_config.json
    origin: str


def cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype).contiguous() for k, v in tensors.items()}


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Llama checkpoint of this config holds (HF names), with its shape."""
    h, kv, inter = cfg.hidden_size, cfg.kv_dim, cfg.intermediate_size
    q = cfg.num_attention_heads * cfg.head_dim
    want = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        want["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        want.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        })
    return want


def check_complete(cfg: LlamaConfig, tensors: dict[str, torch.Tensor], origin: str) -> None:
    """Every tensor the architecture needs is present with the right shape, or a clear error."""
    for name, shape in expected_shapes(cfg).items():
        if name not in tensors:
            raise SourceError(f"{origin}: tensor {name} is missing (is this a Llama checkpoint?)")
        if tuple(tensors[name].shape) != shape:
            raise SourceError(f"{origin}: {name} has shape {tuple(tensors[name].shape)}, "
                              f"the config says {shape}")
