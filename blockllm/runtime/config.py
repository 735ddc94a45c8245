"""Engine configuration: one frozen dataclass, every field documented, every mechanism a switch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    device: str = "cpu"  # cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | bfloat16 | float16: compute and KV dtype
    memory_budget: int = 4 << 30  # bytes of block weights resident on the device at once
    kv_budget: int = 512 << 20  # bytes of KV cache: all decoder blocks, layers and devices
    page_size: int = 16  # tokens per KV page
    share_blocks: bool = True  # False (ablation): every model runs its own copy of each block
    coordinate_kv: bool = True  # False (ablation): reserve KV block by block, not chain-wide
    kv_by_sharing: bool = False  # KV pages of a pool in proportion to the models whose chains
    #   run it, not the same pages in every pool. Off: on 2 CPU cores it admitted 23-33% more
    #   requests at once but p95 rose 7% (bigger batches cost time on a CPU;
    #   benchmarks/kv_split.py); on a GPU, not measured yet
    prefill_chunk: int | None = 512  # chunked prefill: at most this many prompt tokens per
    #                                  pass (decodes are batched first); measured on 2 CPU
    #                                  cores with 128-token prompts at 2 req/s, chunks of
    #                                  32/64 raised TPOT p50 from 110 to 156/124 ms: each
    #                                  chunk pays a whole pass over the weights
    pack_weights: bool = True  # CPU (float32, bfloat16): matmul weights in oneDNN's blocked
    #                            layout (models.llama.pack_weight), a tied model's embedding
    #                            with a packed copy for its logits (counted in the budget).
    #                            Measured on 2 cores, SmolLM2 fp32, one model in process: a
    #                            decode step at batch 8 129 -> 61 ms; at 2 req/s TPOT p50
    #                            268 -> 98 ms (MKL's matmuls reach ~10 GB/s here). False: the
    #                            plain layout, as the reference path (models.chain) keeps it
    cuda_graphs: str = "auto"  # auto: on a GPU, decoder segments' decode steps replay CUDA
    #                          graphs by batch bucket (runtime/graphs.py); off: eager;
    #                          uncaptured: the graphs' static buffers without capture (the
    #                          path tested on a CPU)
    batch_tokens: int | None = None  # fixed tokens per block call (ablation); None: profiled
    latency_target_s: float | None = None  # per-call latency target for the profiled limit;
    #                                        None picks the knee of the throughput curve
    use_equivalence: bool = False  # serve measured equivalent chains within each model's budget
    pinned_chains: tuple[tuple[str, str], ...] = ()  # (model, option label): every request of
    #   the model runs that recorded chain option (to measure one, e.g. under lm-eval)
    max_waiting: int = 1024  # requests queued before admission; more are refused (backpressure)
    residency_unit: str = "block"  # block | model: load and evict whole models (per-model baseline)
    segments: bool = True  # run each maximal run of decoder blocks that the same chains share
    #                        as one block (runtime/segments.py); False (ablation): one call per
    #                        zoo block
    wave_wait_s: float = 1.0  # shared blocks run in waves (the rear of the wave first);
    #                           a request queued longer than this at a block goes first
    wave_order: str = "cycle"  # cycle: a pass is a cycle, the wave's rear is the position
    #   after the longest empty run (runtime.scheduler.wave_places), so a fresh request joins
    #   the next pass after the head call in flight; chain (ablation, the rule before):
    #   earliest chain position first, so a fresh prompt ran alone ahead of that head call.
    #   Measured in process on 2 cores at 1.5 req/s: TTFT p50 0.74 -> 0.45 s
    devices: int = 1  # hosts: cuda:0..N-1 with device=cuda; N hosts sharing one CPU with cpu
    backend: str = "local"  # local: hosts in this process | ray: one Ray actor per device
    placement: str = "locality"  # locality | round_robin | random: blocks onto devices
    servers: tuple[int, ...] | None = None  # devices per server (a fast-link domain), in
    #                                         device order; None: from the hosts (Ray: one
    #                                         server per node; local: one)
    replicas: int = 1  # with several devices: copies of each block that several served
    #                    models share (one per device at most); a request uses one replica of
    #                    each block for its whole life, chosen at admission (runtime.routing)
    replan_s: float | None = None  # with several devices: place blocks again by the load seen
    #                                every this many seconds, moving them while serving
    ray_address: str | None = None  # an existing Ray cluster (None: start one on this machine)
    speculate: bool = False  # load blocks the queued and running requests need next, in the
    #                          background (runtime.speculation). Off by default: measured, it
    #                          halves the engine's load time but has not lowered latency yet
    speculate_ahead: int = 2  # how many blocks ahead along each request's chain
    load_penalty_s: float = 1.0  # per 128 MiB that must be loaded first, the scheduler treats
    #                              that work as this much younger: resident blocks (or models)
    #                              go first, and nothing waits forever

    def __post_init__(self):
        if self.page_size < 1 or self.kv_budget <= 0 or self.memory_budget <= 0:
            raise ValueError("page_size, kv_budget and memory_budget must be positive")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise ValueError("prefill_chunk must be >= 1")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ValueError("batch_tokens must be >= 1")
        if self.cuda_graphs not in ("auto", "off", "uncaptured"):
            raise ValueError("cuda_graphs is auto, off or uncaptured")
        if self.wave_order not in ("cycle", "chain"):
            raise ValueError("wave_order is cycle or chain")
        if self.residency_unit not in ("block", "model"):
            raise ValueError("residency_unit is block or model")
        if self.speculate_ahead < 0:
            raise ValueError("speculate_ahead must be >= 0")
        if self.devices < 1 or self.replicas < 1:
            raise ValueError("devices and replicas must be >= 1")
        if self.backend not in ("local", "ray"):
            raise ValueError("backend is local or ray")
        if self.servers is not None and (sum(self.servers) != self.devices or
                                         min(self.servers) < 1):
            raise ValueError(f"servers {self.servers} must be positive and add up to devices "
                             f"({self.devices})")
        if self.placement not in ("locality", "round_robin", "random"):
            raise ValueError("placement is locality, round_robin or random")
        if self.replicas > 1 and (self.replicas > self.devices or not self.share_blocks):
            raise ValueError(f"replicas {self.replicas}: at most one per device (devices "
                             f"{self.devices}), and only of shared blocks (not with no sharing "
                             "or the per-model baseline)")
        if self.residency_unit == "model" and self.share_blocks:
            raise ValueError("whole-model residency is the per-model baseline: share_blocks=False")
