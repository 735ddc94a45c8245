"""LoRA adapter blocks: low-rank deltas attached to the decoder block they modify.

An adapter block holds, for each layer j of its decoder block and each target module m,
`layers.{j}.{m}.lora_A` (r, in) and `layers.{j}.{m}.lora_B` (out, r); its delta is
`scaling * (x @ A.T) @ B.T`, as peft computes it (dropout is off at inference).

A batch may mix sequences of several adapters (and of none) in the same decoder block:
`LoraSegments` says which rows of the flattened tokens use which adapter, so the base matmul
runs once for the whole batch and only the low-rank deltas run per adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter block's tensors, on the device that runs its decoder block."""

    tensors: dict[str, torch.Tensor]  # "layers.{j}.{module}.lora_A" / ".lora_B"
    scaling: float  # lora_alpha / r (or / sqrt(r) with rslora)

    def pair(self, layer: int, module: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        a = self.tensors.get(f"layers.{layer}.{module}.lora_A")
        if a is None:
            return None
        return a, self.tensors[f"layers.{layer}.{module}.lora_B"]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> LoraAdapter:
        return LoraAdapter({k: v.to(device, dtype) for k, v in self.tensors.items()}, self.scaling)

    @classmethod
    def stack(cls, parts: list[tuple[LoraAdapter | None, int]]) -> LoraAdapter:
        """The adapters of consecutive decoder blocks (each with its block's layer count; None
        where a block has none) as one adapter of the blocks run as one: layers renumbered.
        One scaling: the parts' own when they agree (one LoRA model's blocks do), else each
        part's folded into its B."""
        scales = {a.scaling for a, _ in parts if a is not None}
        scaling = scales.pop() if len(scales) == 1 else 1.0
        tensors, offset = {}, 0
        for a, n in parts:
            for name, t in (a.tensors.items() if a is not None else ()):
                _, j, rest = name.split(".", 2)
                fold = a.scaling / scaling if name.endswith("lora_B") else 1.0
                tensors[f"layers.{offset + int(j)}.{rest}"] = t if fold == 1.0 else t * fold
            offset += n
        return cls(tensors, scaling)


@dataclass(frozen=True)
class LoraSegments:
    """Rows [start, end) of the flattened tokens use `adapter` (None: base weights only)."""

    spans: tuple[tuple[int, int, LoraAdapter | None], ...]

    @classmethod
    def single(cls, adapter: LoraAdapter | None, n_tokens: int) -> LoraSegments | None:
        return None if adapter is None else cls(((0, n_tokens, adapter),))

    groups: tuple[tuple[torch.Tensor, LoraAdapter], ...] = ()  # (rows, adapter): see below

    @classmethod
    def per_sequence(cls, adapters: list[LoraAdapter | None], query_lens: list[int]
                     ) -> LoraSegments | None:
        """Rows grouped by adapter (Punica-style): one gathered low-rank matmul per adapter in
        the batch, not one per request. Runs of one adapter stay slices (no gather)."""
        if all(a is None for a in adapters):
            return None
        spans, start = [], 0
        for a, n in zip(adapters, query_lens, strict=True):
            if spans and spans[-1][2] is a:
                spans[-1] = (spans[-1][0], start + n, a)
            else:
                spans.append((start, start + n, a))
            start += n
        users: dict[int, list[tuple[int, int]]] = {}
        for s, e, a in spans:
            if a is not None:
                users.setdefault(id(a), []).append((s, e))
        if all(len(u) == 1 for u in users.values()):
            return cls(tuple(spans))
        by_id = {id(a): a for _, _, a in spans if a is not None}
        groups = tuple((torch.cat([torch.arange(s, e) for s, e in rows]), by_id[k])
                       for k, rows in users.items())
        return cls((), groups)

    def add_delta(self, y: torch.Tensor, x: torch.Tensor, layer: int, module: str) -> torch.Tensor:
        """y: (T, out) base output; x: (T, in) its input. Adds each span's low-rank delta."""
        for start, end, adapter in self.spans:
            pair = adapter.pair(layer, module) if adapter is not None else None
            if pair is None:
                continue
            a, b = pair
            y[start:end] += adapter.scaling * ((x[start:end] @ a.T) @ b.T)
        for rows, adapter in self.groups:
            pair = adapter.pair(layer, module)
            if pair is not None:
                a, b = pair
                rows = rows.to(y.device)
                y.index_add_(0, rows, adapter.scaling * ((x[rows] @ a.T) @ b.T))
        return y


def merge_into(decoder: dict[str, torch.Tensor], adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """Decoder block tensors with the adapter folded in: W + scaling * B @ A (a new block)."""
    out = dict(decoder)
    for name, a in adapter.tensors.items():
        if not name.endswith(".lora_A"):
            continue
        base = name[: -len(".lora_A")]
        b = adapter.tensors[base + ".lora_B"]
        w = out[base + ".weight"]
        delta = (b.double() @ a.double()) * adapter.scaling
        out[base + ".weight"] = (w.double() + delta).to(w.dtype)
    return out
