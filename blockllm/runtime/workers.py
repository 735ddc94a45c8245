"""Block workers: the only runtime code that touches tensors on a device.

A worker owns one block's module (and, for decoder blocks, its paged KV pool) and runs a batch
of requests through it: token ids for the embedding, flattened hidden states for decoder and
stitch blocks (with each request's LoRA adapter applied to its own rows); the head picks
each request's next token from its last-token logits on the device (models/sampling.py).
"""

from __future__ import annotations

import itertools
import time

import torch

from blockllm.models.attention import AttnBatch
from blockllm.models.chain import build_block
from blockllm.models.config import LlamaConfig
from blockllm.models.kv_cache import KVLayout, KVPool, PageTable
from blockllm.models.lora import LoraAdapter, LoraSegments
from blockllm.models.logprobs import logprobs_of
from blockllm.models.sampling import GREEDY, Pick, pick
from blockllm.runtime.graphs import DecodeGraphs
from blockllm.zoo.partition import Block


class BlockWorker:
    def __init__(self, cfg: LlamaConfig, block: Block, device: torch.device, dtype: torch.dtype,
                 pack: bool = False, graphs: str = "off"):
        """`graphs`: EngineConfig.cuda_graphs (auto: capture on a GPU; off; uncaptured)."""
        self.cfg, self.kind, self.device = cfg, block.kind, device
        if device.type == "cuda":
            # cuDNN attention builds a plan per new shape (~50 ms on an H100, measured), and a
            # serving engine's shapes change every step: the flash/efficient kernels need none
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.module = build_block(cfg, block.kind, block.tensors, device=device, dtype=dtype,
                                  n_layers=block.signature.get("n_layers", 0),
                                  tied_embedding=torch.empty(0), pack=pack)
        self.nbytes = block.nbytes
        self.dtype = dtype
        self.graphs: DecodeGraphs | None = None  # decoder blocks: decode steps by bucket
        if block.kind == "decoder" and (graphs == "uncaptured" or
                                        graphs == "auto" and device.type == "cuda"):
            self.graphs = DecodeGraphs(self.module, device, capture=graphs == "auto")

    def run(self, *args, **kwargs) -> list:
        """`_run` with this worker's GPU the current one (Triton launches on the current
        device, whatever its tensors' device, and so would a graph capture)."""
        if self.device.type != "cuda":
            return self._run(*args, **kwargs)
        with torch.cuda.device(self.device):
            return self._run(*args, **kwargs)

    @torch.inference_mode()
    def _run(self, inputs: list[torch.Tensor], pool: KVPool | None = None,
            attn: AttnBatch | None = None, adapters: list[LoraAdapter | None] | None = None,
            tied_weight: torch.Tensor | None = None,
            picks: tuple[Pick, ...] | None = None,
            prompt_lp: tuple[tuple[tuple[int, ...], int] | None, ...] | None = None) -> list:
        """One batched call. inputs[i]: ids (n_i,) or hidden (n_i, h). Returns per-request
        outputs: hidden (n_i, h); for the head, each request's next token (an int, or a
        TokenLogprob where its params ask for logprobs) as `picks[i]` says, picked on the
        device for the whole batch at once, with (that, its prompt's logprobs) where
        `prompt_lp[i]` asks for them. Decoder blocks take `attn`, this step's slots and page
        tables in `pool` (on the host or the device: moved here)."""
        lens = [x.shape[0] for x in inputs]
        x = (inputs[0] if len(inputs) == 1 else torch.cat(inputs)).to(self.device)
        if self.kind == "embed":
            y = self.module(x)
        elif self.kind == "head":
            if tied_weight is not None:
                self.module.tied_weight = tied_weight
            ends = list(itertools.accumulate(lens))  # each request's last row + 1
            rows = x if ends[-1] == len(lens) else \
                x[torch.tensor(ends, device=self.device) - 1]  # (decodes: every row is last)
            outs = pick(self.module(rows), picks or (GREEDY,) * len(lens))
            for b, spec in enumerate(prompt_lp or ()):
                if spec is not None:  # (its output, the prompt's logprobs)
                    start = ends[b] - lens[b]
                    outs[b] = (outs[b], self._prompt_logprobs(x[start: start + lens[b] - 1],
                                                              *spec))
            return outs
        elif self.kind == "stitch":
            y = self.module(x)
        else:
            lora = LoraSegments.per_sequence(adapters, lens) if adapters else None
            if self.graphs is not None and self.graphs.fits(attn, lora):
                y = self.graphs.run(x, pool, attn)  # takes `attn` from the host itself
            else:
                y = self.module(x, pool, attn.to(self.device), lora)
        return list(y.split(lens))

    def _prompt_logprobs(self, rows: torch.Tensor, targets: tuple[int, ...], k: int) -> tuple:
        """Log-softmax of the head over a prompt's positions but the last: each next prompt
        token's logprob (n-1,) and the top k ids and values (n-1, k), on the host."""
        return logprobs_of(self.module(rows), torch.tensor(targets), k)


def new_pool(cfg: LlamaConfig, n_layers: int, pages: int, page_size: int, dtype: torch.dtype,
             device: torch.device) -> KVPool:
    return KVPool(KVLayout(n_layers, pages, page_size, cfg.num_key_value_heads, cfg.head_dim),
                  dtype, device)


def _dummies(worker: BlockWorker, pages: int):
    """A KV pool of `pages` pages (decoder blocks) and a tied embedding (tied heads) for timing
    calls on dummy inputs; None where the block needs none."""
    cfg = worker.cfg
    pool = new_pool(cfg, len(worker.module.layers), pages, 16, worker.dtype, worker.device) \
        if worker.kind == "decoder" else None
    tied = torch.zeros(cfg.vocab_size, cfg.hidden_size, dtype=worker.dtype,
                       device=worker.device) \
        if worker.kind == "head" and cfg.tie_word_embeddings else None
    return pool, tied


def _median_call_s(worker: BlockWorker, inputs, pool, tied, seqs: list[int],
                   lens: list[int], context: int, repeats: int) -> float:
    """Median seconds of `repeats` calls; each sequence's KV holds `context` tokens after it
    (its new `lens` tokens included). A GPU call returns before its kernels finish, so the
    device is synchronized around it: the kernels are timed, not the launch."""
    cuda = worker.device.type == "cuda"
    times = []
    for i in range(repeats + 1):  # call 0 warms up: a new shape pays oneDNN/CUDA set-up once
        attn = None
        if pool is not None:
            table = PageTable(pool.layout.num_pages, 16)
            for s, n in zip(seqs, lens, strict=True):
                table.append(s, context - n)  # earlier tokens' KV (garbage: timing only)
            attn = AttnBatch.build(table, seqs, lens)  # on the host, as the engine's
        if cuda:
            torch.cuda.synchronize(worker.device)
        t = time.perf_counter()
        worker.run(inputs(), pool, attn, None, tied)
        if cuda:
            torch.cuda.synchronize(worker.device)
        if i:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def profile_latency(worker: BlockWorker, sizes: tuple[int, ...] = (1, 8, 32, 128, 512),
                    repeats: int = 3) -> list[tuple[int, float]]:
    """Seconds per call at each batch size (tokens), median of `repeats`, on dummy inputs."""
    h = worker.cfg.hidden_size
    pool, tied = _dummies(worker, -(-max(sizes) // 16))

    def inputs(n: int):
        return lambda: [torch.zeros(n, dtype=torch.long) if worker.kind == "embed" else
                        torch.zeros(n, h, dtype=worker.dtype)]
    return [(n, _median_call_s(worker, inputs(n), pool, tied, [0], [n], n, repeats))
            for n in sizes]


def sequence_cost(worker: BlockWorker, n_seqs: int = 8, context: int = 32,
                  repeats: int = 3) -> float:
    """Seconds each extra sequence adds to a call beyond what its tokens cost: a decode batch
    of `n_seqs` sequences (1 new token each, `context` tokens of KV) against one sequence of
    `n_seqs` new tokens, per extra sequence (>= 0). The head computes logits per sequence and
    attention runs per sequence, so a token curve alone undercounts decode batches. Used by the
    cluster simulator, not the engine."""
    if worker.kind not in ("decoder", "head"):
        return 0.0
    h = worker.cfg.hidden_size
    pool, tied = _dummies(worker, n_seqs * -(-context // 16))
    many = _median_call_s(worker, lambda: [torch.zeros(1, h, dtype=worker.dtype)] * n_seqs,
                          pool, tied, list(range(n_seqs)), [1] * n_seqs, context, repeats)
    one = _median_call_s(worker, lambda: [torch.zeros(n_seqs, h, dtype=worker.dtype)],
                         pool, tied, [0], [n_seqs], context, repeats)
    return max(0.0, (many - one) / (n_seqs - 1))
