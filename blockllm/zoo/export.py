"""A zoo model back as a `ModelSource` with transformers' tensor names (the inverse of partition).

Used to build transformers reference models from exactly what the zoo stores.
"""

from __future__ import annotations

from blockllm.loaders.source import LoraSource, ModelSource
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
