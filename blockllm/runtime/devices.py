"""The engine's devices: one host per device, and which device runs each block key.

Keys are placed once, at start, by the same functions the cluster simulator uses
(`runtime.placement`): the chains of the served models (and their equivalent chains) form
the workload, each device is one GPU of one server (the links of one machine). A block in
the chains of several served models gets up to `EngineConfig.replicas` replicas
(`placement.add_replicas`: on the least busy devices with room), each a key of its own
(`BlockKey.replica`: its own worker, queue and KV pool); which replica a request uses is
`runtime.routing`. Two rules override the placement: a tied head runs where its embedding
is, one replica beside each of the embedding's (its logits read the embedding's weight), and
with whole-model residency (the per-model baseline) each model's blocks all go to one
device, models spread round-robin, one replica each.
"""

from __future__ import annotations

import dataclasses

from blockllm.errors import UserError
from blockllm.runtime.config import EngineConfig
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.placement import (
    PLACEMENTS,
    Cluster,
    Device,
    PlacementError,
    add_replicas,
    workload_from_chains,
)


def service_s(nbytes: int) -> float:
    """A block's estimated seconds per pass before any is measured: its weights read at 1 TB/s
    (placement's load model and routing's load estimate share it)."""
    return nbytes / 1e12


def device_names(cfg: EngineConfig) -> list[str]:
    """torch device of each host: cuda -> cuda:0..N-1; cpu -> N hosts sharing the CPU."""
    if cfg.devices == 1:
        return [cfg.device]
    if cfg.device == "cpu":
        return ["cpu"] * cfg.devices
    if cfg.device != "cuda":
        raise UserError(f"--devices {cfg.devices} needs --device cuda or cpu, not {cfg.device}")
    import torch
    if torch.cuda.device_count() < cfg.devices:
        raise UserError(f"--devices {cfg.devices} but {torch.cuda.device_count()} GPUs are "
                        "visible; lower --devices")
    return [f"cuda:{i}" for i in range(cfg.devices)]


def make_hosts(zoo, cfg: EngineConfig) -> list:
    names = device_names(cfg)
    if cfg.backend == "ray":
        from blockllm.runtime.ray_hosts import ray_hosts
        return ray_hosts(str(zoo.root), names, cfg.dtype, cfg.ray_address, cfg.pack_weights,
                         cfg.cuda_graphs)
    from blockllm.runtime.hosts import LocalHost
    return [LocalHost(zoo, name, cfg.dtype, i, cfg.pack_weights, cfg.cuda_graphs)
            for i, name in enumerate(names)]


def topology(hosts: list, cfg: EngineConfig) -> Cluster:
    """The engine's devices as a cluster for placement and routing: `cfg.servers` (devices
    per server, in device order) where given, else the hosts' own servers (a Ray actor's node;
    local hosts share one), numbered in order of first appearance."""
    if cfg.servers is not None:
        labels = [s for s, n in enumerate(cfg.servers) for _ in range(n)]
    else:
        labels = [h.server for h in hosts]
    index = {s: i for i, s in enumerate(dict.fromkeys(labels))}
    return Cluster(tuple(Device(index[s], 0) for s in labels))  # memory: see place_keys


def place_keys(engine, rates: dict[str, float] | None = None) -> dict[BlockKey, tuple[int, ...]]:
    """The devices of the replicas of every block key the engine may run (base keys, first
    replica first). `rates`: requests per model (the popularity of its chains; equal when
    None)."""
    n, cfg = len(engine.hosts), engine.cfg
    models = list(engine.models)
    entries = {m: engine.all_entries(m) for m in models}
    if n == 1:
        return {k: (0,) for m in models for k, _ in entries[m]}
    if cfg.residency_unit == "model":
        return {k: (i % n,) for i, m in enumerate(models) for k, _ in entries[m]}
    chains = {m: [e.block for e in engine.chains[m]] for m in models}
    for m in models:  # equivalent chains count as more chains of the same model
        for j, (_, chain, _) in enumerate(engine.options.get(m, ())):
            chains[f"{m}#{j}"] = [e.block for e in chain]
    sizes = {e.block: engine.info[e.block].nbytes for m in models for _, e in entries[m]}
    hidden = max(c.hidden_size for c in engine.models.values())
    # service time of a pass ~ bytes of weights read; every chain equally popular at start
    rate = {c: (rates or {}).get(c.split("#")[0], 1.0) for c in chains}
    work = workload_from_chains(chains, rate, sizes,
                                {b: service_s(s) for b, s in sizes.items()}, hidden * 4)
    per_device = max(cfg.memory_budget, -(-sum(sizes.values()) // n) * 2)
    cluster = dataclasses.replace(engine.cluster, devices=tuple(  # LRU residency enforces the
        dataclasses.replace(d, memory=per_device) for d in engine.cluster.devices))  # budget
    try:  # one replica each (the placement's own replicas follow its load model, not ours)
        placed = {b: d[:1] for b, d in PLACEMENTS[cfg.placement](work, cluster).items()}
    except PlacementError as e:
        raise UserError(f"cannot place the blocks on {n} devices: {e}") from e
    if cfg.replicas > 1:  # blocks in the chains of several models
        users: dict[str, set[str]] = {}
        for m in models:
            for _, e in entries[m]:
                users.setdefault(e.block, set()).add(m)
        placed = add_replicas(placed, work, cluster,
                              {b: cfg.replicas for b, u in users.items() if len(u) > 1})
    where = {}
    for m in models:
        for k, e in entries[m]:
            where[k] = placed[e.block]
        for chain in engine.all_chains(m):  # a tied head beside the embedding it reads
            head = engine.key(m, chain[-1], chain)
            if head.tied:
                where[head] = where[engine.key(m, chain[0], chain)]
    return where


def key_layout(engine, placed: dict[BlockKey, tuple[int, ...]]) -> tuple[dict, dict, dict]:
    """From `place_keys`'s output: replicas (block key -> its replica keys), where (replica
    key -> device) and entry_of (replica key -> (chain entry, model))."""
    replicas = {k: tuple(k.replica_of(i) for i in range(len(devs)))
                for k, devs in placed.items()}
    where = {k.replica_of(i): d for k, devs in placed.items() for i, d in enumerate(devs)}
    entry_of: dict[BlockKey, tuple] = {}
    for m in engine.models:
        for k, e in engine.all_entries(m):
            for r in replicas[k]:
                entry_of.setdefault(r, (e, m))
    return replicas, where, entry_of
