"""LoRA adapter blocks: low-rank deltas attached to the decoder block they modify.

An adapter block holds, for each layer j of its decoder block and each target module m,
`layers.{j}.{m}.lora_A` (r, in) and `layers.{j}.{m}.lora_B` (out, r); its delta is
`scaling * (x @ A.T) @ B.T`, as peft computes it (dropout is off at inference).

A batch may mix sequences of several adapters (and of none) in the same decoder block:
`LoraSegments` says which rows of the flattened tokens use which adapter, so the base matmul
runs once for the whole batch and only the low-rank deltas run per adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# a fused decoder layer's matmuls, in order: q/k/v, o, gate/up, down (models.llama)
FUSED = (TARGETS[:3], TARGETS[3:4], TARGETS[4:6], TARGETS[6:])


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter block's tensors, on the device that runs its decoder block."""

    tensors: dict[str, torch.Tensor]  # "layers.{j}.{module}.lora_A" / ".lora_B"
    scaling: float  # lora_alpha / r (or / sqrt(r) with rslora)
    _joint: dict = field(default_factory=dict, compare=False, repr=False)  # see joint()

    def pair(self, layer: int, module: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        a = self.tensors.get(f"layers.{layer}.{module}.lora_A")
        if a is None:
            return None
        return a, self.tensors[f"layers.{layer}.{module}.lora_B"]

    def joint(self, layer: int, modules: tuple[str, ...], outs: tuple[int, ...]
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One low-rank delta for `modules` whose base outputs are the column blocks (of
        widths `outs`) of one fused matmul (q, k, v; gate, up): A (sum r, in) of the modules
        this adapter targets, stacked, and Bt (sum r, sum outs), the B's transposed and set
        block-diagonally with the scaling folded in, so `(x @ A.T) @ Bt` is every module's
        delta at once. None if it targets none of them. Built once per (layer, modules)."""
        key = (layer, modules)
        if key not in self._joint:
            pairs = [self.pair(layer, m) for m in modules]
            if all(p is None for p in pairs):
                self._joint[key] = None
                return None
            a = torch.cat([p[0] for p in pairs if p is not None]).contiguous()
            bt = a.new_zeros(a.shape[0], sum(outs))
            row = col = 0
            for p, n in zip(pairs, outs, strict=True):
                if p is not None:
                    bt[row: row + p[0].shape[0], col: col + n] = p[1].T * self.scaling
                    row += p[0].shape[0]
                col += n
            self._joint[key] = (a, bt)
        return self._joint[key]

    def fused_pairs(self, n_layers: int, ins: tuple[int, ...], outs: tuple[tuple[int, ...], ...]
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """joint() for every layer and fused matmul (FUSED, whose input widths are `ins` and
        output column blocks `outs`), layer-major, as the one-call decode step takes them
        (kernels/decode_layers.cpp): rank 0, A (0, in) and Bt (0, out), where this adapter has
        no delta. Built once per shape."""
        key = ("fused", n_layers, ins, outs)
        if key not in self._joint:
            like = next(iter(self.tensors.values()), torch.empty(0))
            a_list, b_list = [], []
            for j in range(n_layers):
                for modules, n_in, n_out in zip(FUSED, ins, outs, strict=True):
                    pair = self.joint(j, modules, n_out) or \
                        (like.new_zeros(0, n_in), like.new_zeros(0, sum(n_out)))
                    a_list.append(pair[0])
                    b_list.append(pair[1])
            self._joint[key] = (a_list, b_list)
        return self._joint[key]

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
    _rows: torch.Tensor | None = field(default=None, compare=False, repr=False)  # row_adapters
    _adapters: list | None = field(default=None, compare=False, repr=False)  # adapters()

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

    def add_delta(self, y: torch.Tensor, x: torch.Tensor, layer: int,
                  modules: tuple[str, ...], outs: tuple[int, ...] | None = None) -> torch.Tensor:
        """y: (T, sum outs) base output of `modules` (one module, or those of one fused matmul
        with output widths `outs`); x: (T, in) its input. Adds each row's adapter's low-rank
        delta in place, for all the modules at once (LoraAdapter.joint): on a CPU in float32,
        one native op for the whole batch (kernels/lora_ops.cpp); else a pair of small matmuls
        per span or adapter group."""
        outs = outs or (y.shape[1],)
        ops = _native(y, x)
        if ops is not None:
            adapters = self.adapters()
            pairs = [a.joint(layer, modules, outs) for a in adapters]
            if any(p is not None for p in pairs):
                if None in pairs:  # an adapter without these modules: rank 0
                    none = (x.new_empty(0, x.shape[1]), y.new_empty(0, y.shape[1]))
                    pairs = [p or none for p in pairs]
                ops.lora_delta_(y, x, [p[0] for p in pairs], [p[1] for p in pairs],
                                self.row_adapters(y.shape[0]))
            return y
        for start, end, adapter in self.spans:
            pair = adapter.joint(layer, modules, outs) if adapter is not None else None
            if pair is not None:
                a, bt = pair
                y[start:end] += (x[start:end] @ a.T) @ bt
        for rows, adapter in self.groups:
            pair = adapter.joint(layer, modules, outs)
            if pair is not None:
                a, bt = pair
                rows = rows.to(y.device)
                y.index_add_(0, rows, (x[rows] @ a.T) @ bt)
        return y

    def adapters(self) -> list[LoraAdapter]:
        """The distinct adapters of the batch, in order of first use."""
        if self._adapters is None:
            seen = {id(a): a for _, _, a in self.spans if a is not None}
            seen.update((id(a), a) for _, a in self.groups)
            object.__setattr__(self, "_adapters", list(seen.values()))
        return self._adapters

    def row_adapters(self, n_rows: int) -> torch.Tensor:
        """(n_rows,) int64: each row's index in adapters(), -1 for the base weights alone."""
        if self._rows is None or self._rows.numel() != n_rows:
            pos = {id(a): k for k, a in enumerate(self.adapters())}
            rows = torch.full((n_rows,), -1, dtype=torch.long)
            for start, end, a in self.spans:
                if a is not None:
                    rows[start:end] = pos[id(a)]
            for r, a in self.groups:
                rows[r] = pos[id(a)]
            object.__setattr__(self, "_rows", rows)
        return self._rows


def _native(y: torch.Tensor, x: torch.Tensor):
    """The native ops where the LoRA kernel applies (float32, contiguous, CPU), else None."""
    if y.device.type != "cpu" or y.dtype != torch.float32 or x.dtype != torch.float32 or \
            y.dim() != 2 or not (y.is_contiguous() and x.is_contiguous()):
        return None
    from blockllm.kernels import native
    return native()


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
