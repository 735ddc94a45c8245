"""An HF model directory: config.json + model.safetensors (or a sharded index)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from blockllm.loaders.source import ModelSource, SourceError, cast, check_complete
from blockllm.models.config import LlamaConfig


def load_hf_dir(path: str | Path, dtype: torch.dtype = torch.float32) -> ModelSource:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise SourceError(f"{path}: no config.json; pass an HF model directory, a .gguf file, "
                          "dummy:PRESET or embedded")
    try:
        config = LlamaConfig.from_hf(json.loads(cfg_file.read_text()))
    except (ValueError, KeyError) as e:
        raise SourceError(f"{cfg_file}: {e}") from e
    tensors: dict[str, torch.Tensor] = {}
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise SourceError(f"{path}: no model.safetensors or model.safetensors.index.json "
                          "(pickled .bin checkpoints are refused; convert them to safetensors)")
    for f in files:
        tensors.update(load_file(str(path / f)))
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    check_complete(config, tensors, str(path))
    return ModelSource(config=config, tensors=cast(tensors, dtype), origin=str(path.resolve()),
                       tokenizer_loader=lambda: _tokenizer(path, config))


def _tokenizer(path: Path, config: LlamaConfig):
    from blockllm.loaders.tokenizer import ByteTokenizer
    if (path / ByteTokenizer.MARKER).is_file():
        return ByteTokenizer(config)
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: no tokenizer files found ({e})") from e
