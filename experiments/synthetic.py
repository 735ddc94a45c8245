"""Synthetic variants of a base model, derived deterministically, for experiments at scale.

Partial: the top `top` decoder layers perturbed (a partial fine-tune's storage pattern);
LoRA: a random rank-8 adapter on every layer's attention projections; full: every tensor
perturbed. Used where storage and serving cost, not task quality, is measured (footprint,
scaling): real fine-tunes are in blockllm.variants.
"""

from __future__ import annotations

import torch

from blockllm.loaders.source import LoraSource, ModelSource
from blockllm.models.lora import TARGETS


def variant(base: ModelSource, kind: str, i: int, top: int = 4) -> ModelSource:
    g = torch.Generator().manual_seed(1000 + i)
    n = base.config.num_hidden_layers
    t = dict(base.tensors)
    adapter = None
    if kind == "lora":
        lora = {}
        for layer in range(n):
            for m in TARGETS[:4]:  # attention projections; their shapes are (h, h)-like
                w = t[f"model.layers.{layer}.{m}.weight"]
                lora[f"model.layers.{layer}.{m}.lora_A"] = torch.randn(8, w.shape[1], generator=g)
                lora[f"model.layers.{layer}.{m}.lora_B"] = torch.randn(w.shape[0], 8, generator=g)
        adapter = LoraSource(lora, 2.0, 8, None, f"synthetic-lora-{i}")
    elif kind in ("partial", "full"):
        for k, v in t.items():
            parts = k.split(".")
            in_top = parts[:2] == ["model", "layers"] and int(parts[2]) >= n - top
            if kind == "full" or in_top:
                noise = torch.randn(v.shape, generator=g, dtype=torch.float32)
                t[k] = (v.float() + 1e-3 * noise).to(v.dtype)
    else:
        raise ValueError(f"variant kind is partial, lora or full, not {kind!r}")
    return ModelSource(base.config, t, f"synthetic-{kind}-{i}", adapter=adapter,
                       tokenizer_loader=base.tokenizer_loader)
