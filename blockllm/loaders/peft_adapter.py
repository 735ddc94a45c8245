"""A peft LoRA adapter directory: adapter_config.json + adapter_model.safetensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from blockllm.loaders.source import LoraSource, SourceError
from blockllm.models.lora import TARGETS


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_peft_adapter(path: str | Path, dtype: torch.dtype = torch.float32) -> LoraSource:
    path = Path(path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise SourceError(f"{path}: peft_type {cfg.get('peft_type')!r} is not LoRA")
    for key in ("use_dora", "fan_in_fan_out"):
        if cfg.get(key):
            raise SourceError(f"{path}: {key}=true adapters are not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("modules_to_save"):
        raise SourceError(f"{path}: rank_pattern/alpha_pattern/modules_to_save are not supported")
    if cfg.get("bias", "none") != "none":
        raise SourceError(f"{path}: LoRA bias={cfg['bias']!r} is not supported")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise SourceError(f"{path}: no adapter_model.safetensors (pickled adapters are refused)")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    tensors = {}
    for name, t in load_file(str(weights)).items():
        # base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
        core = name.removeprefix("base_model.model.").removesuffix(".weight")
        parts = core.split(".")
        module = ".".join(parts[3:-1])
        if parts[:2] != ["model", "layers"] or module not in TARGETS or parts[-1] not in (
                "lora_A", "lora_B"):
            raise SourceError(f"{path}: adapter tensor {name} does not target a Llama decoder "
                              f"linear layer ({', '.join(TARGETS)})")
        tensors[core] = t.to(dtype).contiguous()
    if not tensors:
        raise SourceError(f"{path}: the adapter has no LoRA tensors")
    return LoraSource(tensors=tensors, scaling=scaling, rank=r,
                      base_model=cfg.get("base_model_name_or_path"), origin=str(path.resolve()))
