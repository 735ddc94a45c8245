"""Block equivalence: does another model's block compute (nearly) what this model's block does?

For every position of a model's chain, the candidates are the entries (block + adapter) that
other models have at the same position with the same interface (kind and signature). Each
candidate runs on the model's own calibration hidden states, the inputs its block really sees,
and its output is compared with the model's block's output, token by token.

Decoder blocks are residual: y = x + f(x). Their outputs carry x through, so raw outputs of any
two blocks look alike; we compare the updates f(x) instead (cosine and relative L2 of y - x).
Embedding and head outputs (embeddings, logits) are compared directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from blockllm.models.attention import AttnBatch
from blockllm.models.chain import ChainModel, build_block
from blockllm.models.config import LlamaConfig
from blockllm.models.kv_cache import KVLayout, KVPool, PageTable
from blockllm.models.lora import LoraAdapter, LoraSegments
from blockllm.zoo.calibration import CalibrationSet
from blockllm.zoo.partition import Block, ChainEntry
from blockllm.zoo.store import Zoo


@dataclass(frozen=True)
class Metrics:
    cos_mean: float  # mean over tokens of cosine(ref, candidate)
    cos_min: float  # worst token
    rel_l2_mean: float  # mean over tokens of |ref - candidate| / |ref|
    rel_l2_p95: float  # 95th percentile token
    n_tokens: int


def compare(ref: torch.Tensor, cand: torch.Tensor, residual: torch.Tensor | None = None
            ) -> Metrics:
    """ref, cand: (T, d) outputs; with `residual` (T, d), compare the updates out - residual."""
    a, b = ref.double(), cand.double()
    if residual is not None:
        a, b = a - residual.double(), b - residual.double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
    rel = (a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)
    return Metrics(cos_mean=float(cos.mean()), cos_min=float(cos.min()),
                   rel_l2_mean=float(rel.mean()), rel_l2_p95=float(torch.quantile(rel, 0.95)),
                   n_tokens=int(a.shape[0]))


@dataclass(frozen=True)
class Evidence:
    model: str  # whose chain and calibration inputs
    pos: int  # position in that chain
    candidate: ChainEntry  # another model's entry at the same position
    metrics: Metrics


def _interface(zoo: Zoo, entry: ChainEntry) -> tuple:
    info = zoo.block_info(entry.block)
    return info.kind, tuple(sorted((k, str(v)) for k, v in info.signature.items()))


def candidates(zoo: Zoo, model: str) -> dict[int, list[ChainEntry]]:
    """Other models' distinct entries at each position of `model`'s chain, same interface only."""
    own = zoo.chain(model)
    out: dict[int, list[ChainEntry]] = {}
    for other in zoo.models():
        chain = zoo.chain(other)
        if other == model or len(chain) != len(own):
            continue
        for pos, (mine, theirs) in enumerate(zip(own, chain)):
            if theirs == mine or _interface(zoo, theirs) != _interface(zoo, mine):
                continue
            if theirs not in out.setdefault(pos, []):
                out[pos].append(theirs)
    return {p: sorted(c, key=lambda e: (e.block, e.adapter or "")) for p, c in out.items()}


@torch.inference_mode()
def run_entry(cfg: LlamaConfig, block: Block, adapter: Block | None, xs: list[torch.Tensor],
              tied_embedding: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Outputs of one chain entry on each sequence's input (token ids for an embed block)."""
    mod = build_block(cfg, block.kind, block.tensors, n_layers=block.signature.get("n_layers", 0),
                      tied_embedding=tied_embedding)
    if block.kind != "decoder":
        return [mod(x) for x in xs]
    lora = None if adapter is None else LoraAdapter(adapter.tensors, adapter.signature["scaling"])
    outs = []
    for x in xs:
        n = x.shape[0]
        table = PageTable(-(-n // 16), 16)
        pool = KVPool(KVLayout(len(mod.layers), table.num_pages, 16, cfg.num_key_value_heads,
                               cfg.head_dim), x.dtype)
        batch = AttnBatch.build(table, [0], [n])
        outs.append(mod(x, pool, batch, LoraSegments.single(lora, n)))
    return outs


def evaluate_model(zoo: Zoo, model: str, calib: CalibrationSet, progress: bool = True
                   ) -> list[Evidence]:
    """Evidence for every candidate at every position of `model`'s chain."""
    from blockllm.zoo.ingest import chain_model
    cands = candidates(zoo, model)
    if not cands:
        return []
    cfg = zoo.config(model)
    runner: ChainModel = chain_model(zoo, model)
    traces = [runner.trace(list(s)) for s in calib.sequences]  # ([stage inputs..., final], logits)
    ids = [torch.tensor(s) for s in calib.sequences]
    n_stages = len(runner.stages)
    evidence = []
    bar = tqdm(total=sum(len(c) for c in cands.values()), desc=f"equivalence {model}",
               disable=not progress, leave=False)
    for pos, entries in sorted(cands.items()):
        if pos == 0:  # embedding: compare embeddings of the calibration tokens
            inputs, refs, resid = ids, [t[0][0] for t in traces], None
        elif pos == n_stages + 1:  # head: compare logits
            inputs, refs, resid = [t[0][-1] for t in traces], [t[1] for t in traces], None
        else:
            inputs = [t[0][pos - 1] for t in traces]
            refs, resid = [t[0][pos] for t in traces], inputs
        for entry in entries:
            block = zoo.load_block(entry.block)
            adapter = zoo.load_block(entry.adapter) if entry.adapter else None
            outs = run_entry(cfg, block, adapter, inputs, runner.embed.embed_tokens.weight)
            m = compare(torch.cat(refs), torch.cat(outs),
                        None if resid is None else torch.cat(resid))
            evidence.append(Evidence(model, pos, entry, m))
            bar.update()
    bar.close()
    return evidence
