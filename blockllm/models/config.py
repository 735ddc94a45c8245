"""Architecture config of a Llama-family model, and the signature that a block's id hashes.

One frozen dataclass, built from an HF `config.json` dict (or GGUF metadata mapped to the same
keys). Every field that changes what a block computes is part of `block_signature`, so two
blocks with equal bytes but, say, a different RoPE base never share an id.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RopeScaling:
    """llama3-style RoPE frequency scaling (Llama-3.1+). `None` on the config means plain RoPE."""

    factor: float  # how much longer the context is than the original
    low_freq_factor: float  # wavelengths above original/low_freq_factor are divided by `factor`
    high_freq_factor: float  # wavelengths below original/high_freq_factor are kept
    original_max_position_embeddings: int  # the context the base model was trained on


@dataclass(frozen=True)
class LlamaConfig:
    """The shape and numerics of a Llama-family decoder (Llama 2/3, SmolLM2, Mistral-style)."""

    vocab_size: int  # rows of the embedding and of the LM head
    hidden_size: int  # width of the residual stream
    intermediate_size: int  # width of the SwiGLU MLP
    num_hidden_layers: int  # decoder layers
    num_attention_heads: int  # query heads
    num_key_value_heads: int  # KV heads; < num_attention_heads means grouped-query attention
    head_dim: int  # per-head width (hidden_size // heads unless the config says otherwise)
    rms_norm_eps: float  # epsilon inside every RMSNorm
    rope_theta: float  # RoPE base
    max_position_embeddings: int  # the longest context a request may use
    tie_word_embeddings: bool  # LM head reuses the embedding matrix
    rope_scaling: RopeScaling | None = None  # llama3-style scaling, or None
    bos_token_id: int | None = None  # from the tokenizer config, for chat prompts
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)  # generation stops on any

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> LlamaConfig:
        """Map an HF `LlamaConfig`/`MistralConfig` dict; refuse what we do not implement."""
        arch = cfg.get("model_type", "llama")
        if arch not in ("llama", "mistral"):
            raise ValueError(f"unsupported model_type {arch!r}: blockllm implements llama and "
                             f"mistral")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError("attention_bias/mlp_bias Llama variants are not supported")
        if cfg.get("sliding_window") not in (None, 0) and cfg.get("use_sliding_window", True):
            if cfg.get("sliding_window", 0) < cfg.get("max_position_embeddings", 0):
                raise ValueError("sliding-window attention is not supported")
        heads = int(cfg["num_attention_heads"])
        rs = cfg.get("rope_scaling") or (cfg.get("rope_parameters") or None)
        scaling = None
        theta = float(cfg.get("rope_theta", 10000.0))
        if rs:
            theta = float(rs.get("rope_theta", theta))
            kind = rs.get("rope_type", rs.get("type", "default"))
            if kind == "llama3":
                scaling = RopeScaling(
                    factor=float(rs["factor"]),
                    low_freq_factor=float(rs["low_freq_factor"]),
                    high_freq_factor=float(rs["high_freq_factor"]),
                    original_max_position_embeddings=int(rs["original_max_position_embeddings"]),
                )
            elif kind != "default":
                raise ValueError(f"unsupported rope scaling {kind!r}: only llama3 and default")
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rope_scaling=scaling,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` for this architecture (used to build reference models)."""
        out: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) > 1
            else (self.eos_token_ids[0] if self.eos_token_ids else None),
        }
        if self.rope_scaling is not None:
            out["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LlamaConfig:
        d = json.loads(text)
        rs = d.pop("rope_scaling")
        d["eos_token_ids"] = tuple(d["eos_token_ids"])
        return cls(rope_scaling=RopeScaling(**rs) if rs else None, **d)

    def block_signature(self, kind: str, n_layers: int = 0) -> dict[str, Any]:
        """What a block of `kind` computes besides its tensors; hashed into the block id."""
        sig: dict[str, Any] = {"family": "llama", "kind": kind, "hidden_size": self.hidden_size}
        if kind == "embed":
            sig["vocab_size"] = self.vocab_size
        elif kind == "head":
            sig.update(vocab_size=self.vocab_size, rms_norm_eps=self.rms_norm_eps,
                       tied=self.tie_word_embeddings)
        elif kind == "decoder":
            sig.update(
                n_layers=n_layers,
                intermediate_size=self.intermediate_size,
                num_attention_heads=self.num_attention_heads,
                num_key_value_heads=self.num_key_value_heads,
                head_dim=self.head_dim,
                rms_norm_eps=self.rms_norm_eps,
                rope_theta=self.rope_theta,
                rope_scaling=dataclasses.asdict(self.rope_scaling) if self.rope_scaling else None,
            )
        elif kind not in ("lora", "stitch"):
            raise ValueError(f"unknown block kind {kind!r}")
        return sig
