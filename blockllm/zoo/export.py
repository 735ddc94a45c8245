"""A zoo model back in transformers' terms (the inverse of partition): a `ModelSource` with HF
tensor names (reference models are built from exactly what the zoo stores), or an HF directory
on disk (`blockllm zoo export`) that transformers, peft and vLLM load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from blockllm.loaders.source import LoraSource, ModelSource
from blockllm.models.config import LlamaConfig
from blockllm.models.lora import LoraAdapter, merge_into
from blockllm.zoo.store import Zoo, ZooError


def export_source(zoo: Zoo, name: str) -> ModelSource:
    cfg = zoo.config(name)
    tensors, lora, scaling, rank = {}, {}, None, 0
    layer = 0
    for block, adapter in zoo.chain_weights(name):
        if block.kind == "embed":
            tensors["model.embed_tokens.weight"] = block.tensors["embed_tokens.weight"]
        elif block.kind == "head":
            tensors["model.norm.weight"] = block.tensors["norm.weight"]
            if "lm_head.weight" in block.tensors:
                tensors["lm_head.weight"] = block.tensors["lm_head.weight"]
        elif block.kind == "decoder":
            n = block.signature["n_layers"]
            for k, v in block.tensors.items():
                _, j, rest = k.split(".", 2)
                tensors[f"model.layers.{layer + int(j)}.{rest}"] = v
            if adapter is not None:
                scaling, rank = adapter.signature["scaling"], adapter.signature["rank"]
                for k, v in adapter.tensors.items():
                    _, j, rest = k.split(".", 2)
                    lora[f"model.layers.{layer + int(j)}.{rest}"] = v
            layer += n
        else:
            raise ZooError(f"{name} has a {block.kind} block; only plain chains export")
    src = ModelSource(config=cfg, tensors=tensors, origin=f"zoo:{name}",
                      tokenizer_loader=lambda: zoo.tokenizer(name))
    if lora:
        src.adapter = LoraSource(lora, scaling, rank, None, f"zoo:{name}")
    return src


@dataclass(frozen=True)
class Export:
    model_dir: Path  # the whole model, or the base of a LoRA model
    adapter_dir: Path | None  # the peft adapter directory, when exported unmerged


def _write_model(out: Path, cfg: LlamaConfig, tensors: dict[str, torch.Tensor], tokenizer,
                 origin: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps({**cfg.to_hf(), "torch_dtype": dtype},
                                                indent=2))
    eos = list(cfg.eos_token_ids)
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
         "pad_token_id": eos[0] if eos else None}, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt", "blockllm.origin": origin})
    tokenizer.save_pretrained(str(out))  # tokenizer files and the chat template


def export_dir(zoo: Zoo, name: str, out: str | Path, merge: bool = False) -> Export:
    """Write `name` as an HF directory `out` (new or empty).

        OUT/config.json, model.safetensors, generation_config.json, tokenizer files
        OUT/base/... + OUT/adapter/{adapter_config.json, adapter_model.safetensors}  (LoRA)

    A LoRA model exports as its base (adapters stripped) plus one peft adapter directory, or
    with `merge` as one whole model with the adapter folded into its weights (W + s B A, as
    peft's merge_and_unload does: what a deployer serving it alone would run)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZooError(f"{out} exists and is not an empty directory: choose a new --out")
    src = export_source(zoo, name)
    tok = src.load_tokenizer()
    origin = f"blockllm zoo {zoo.root}: {name}"
    a = src.adapter
    if a is not None and merge:
        merged = merge_into({k: v for k, v in src.tensors.items()},
                            LoraAdapter({k: v for k, v in a.tensors.items()}, a.scaling))
        _write_model(out, src.config, merged, tok, origin)
        return Export(out, None)
    if a is None:
        _write_model(out, src.config, src.tensors, tok, origin)
        return Export(out, None)
    _write_model(out / "base", src.config, src.tensors, tok, origin)
    adapter = out / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": a.rank,
        "lora_alpha": a.scaling * a.rank, "lora_dropout": 0.0, "bias": "none",
        "use_rslora": False, "fan_in_fan_out": False, "inference_mode": True,
        "target_modules": sorted({k.split(".")[-2] for k in a.tensors}),
        "layers_to_transform": sorted({int(k.split(".")[2]) for k in a.tensors}),
        "base_model_name_or_path": str((out / "base").resolve())}, indent=2))
    save_file({f"base_model.model.{k}.weight": v.contiguous() for k, v in a.tensors.items()},
              str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    return Export(out / "base", adapter)
