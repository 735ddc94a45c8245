"""Which devices host which blocks, and which replica a request's next hop goes to.

Pure, deterministic functions over sizes, loads and a link-bandwidth model, in the style of
Petals' block selection: the engine, the Ray backend and the cluster simulator all call these,
so what is measured in simulation is what runs.

Locality-aware placement (`locality_aware`) keeps each chain on as few servers as balance
allows and lays a server's blocks over its GPUs (round-robin in chain order, or contiguous
spans where a hop costs more than a block); hot blocks get more replicas (`replicas_needed`,
`add_replicas`). Round-robin and random placement
are the ablation baselines. `route` sends a pass to the replica holding the request's KV, else
the nearest. Moving blocks while serving, make before break: runtime/moves.py.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

Placement = dict[str, tuple[int, ...]]  # block id -> indices of the devices holding a replica


class PlacementError(ValueError):
    """The blocks do not fit the cluster's memory."""


@dataclass(frozen=True)
class Device:
    server: int  # devices on one server share the fast link
    memory: int  # bytes for block weights
    speed: float = 1.0  # relative compute speed (1.0: the device the latencies were measured on)


@dataclass(frozen=True)
class Cluster:
    devices: tuple[Device, ...]
    intra_bw: float = 300e9  # bytes/s between devices of one server (NVLink-class)
    inter_bw: float = 12.5e9  # bytes/s between servers (100 Gbps)
    intra_hop_s: float = 10e-6  # fixed cost of a hop inside a server
    inter_hop_s: float = 100e-6  # fixed cost of a hop between servers (RPC, NIC, switch)

    def transfer_s(self, a: int, b: int, nbytes: float) -> float:
        if a == b:
            return 0.0
        if self.devices[a].server == self.devices[b].server:
            return self.intra_hop_s + nbytes / self.intra_bw
        return self.inter_hop_s + nbytes / self.inter_bw


def cluster_of(gpus_per_server: tuple[int, ...], memory: int = 80 << 30, **links) -> Cluster:
    devs = tuple(Device(s, memory) for s, n in enumerate(gpus_per_server) for _ in range(n))
    return Cluster(devs, **links)


PAPER_CLUSTER = (2, 2, 4, 4)  # the paper's 12 A100-80GB GPUs in 4 servers


@dataclass(frozen=True)
class Workload:
    """What serving history says about the blocks (rates per second of wall time)."""
    sizes: Mapping[str, int]  # block -> bytes
    demand: Mapping[str, float]  # block -> busy seconds per second on a speed-1.0 device
    transitions: Mapping[tuple[str, str], float]  # (a, b) -> hops a -> b per second
    hop_bytes: float  # bytes a hop moves per token (hidden states)
    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # model -> its blocks
    chain_rates: Mapping[str, float] = field(default_factory=dict)  # model -> passes per second


def workload_from_chains(chains: Mapping[str, list[str]], rates: Mapping[str, float],
                         sizes: Mapping[str, int], block_s: Mapping[str, float],
                         hop_bytes: float) -> Workload:
    """A workload from model chains, their request rates (passes per second) and each block's
    service time per pass."""
    demand: dict[str, float] = {}
    trans: dict[tuple[str, str], float] = {}
    for model, chain in chains.items():
        rate = rates.get(model, 0.0)
        for b in chain:
            demand[b] = demand.get(b, 0.0) + rate * block_s[b]
        for a, b in zip(chain, chain[1:]):
            trans[a, b] = trans.get((a, b), 0.0) + rate
    return Workload(dict(sizes), demand, trans, hop_bytes,
                    {m: tuple(ch) for m, ch in chains.items()}, dict(rates))


def replicas_needed(w: Workload, n_devices: int, target_util: float = 0.7) -> dict[str, int]:
    """Enough replicas that none is busier than `target_util` (at most one per device)."""
    return {b: max(1, min(n_devices, math.ceil(w.demand.get(b, 0.0) / target_util)))
            for b in w.sizes}


def locality_aware(w: Workload, c: Cluster, target_util: float = 0.7,
                   slack: float = 0.1) -> Placement:
    """Two levels, deterministic. (1) Servers: chains in order of popularity, each block in
    chain order goes to the server of its predecessor while that server has memory and its
    share of the load left (its compute's share of the total, plus `slack`), so a chain
    crosses the slow network as rarely as balance allows, else to the server with the most
    share left. (2) GPUs of a server, the server's blocks in the order they were assigned:
    when a hop between its GPUs costs less than a block's pass (on average), consecutive
    blocks go to consecutive GPUs, round-robin, so the waves of concurrent requests pipeline
    over all of the server's GPUs; otherwise they are cut into contiguous spans of about
    equal load, one per GPU, so a pass hops only at span ends. (Measured on the paper's
    cluster, simulated with 7B blocks: spans gave p95 17% above round-robin placement,
    interleaving within 6% with 2.3x less link time; experiment `placement`.) (3) Blocks
    busier than `target_util` of a device get extra replicas on the least-loaded other
    devices with room."""
    servers = sorted({d.server for d in c.devices})
    gpus = {s: [i for i, d in enumerate(c.devices) if d.server == s] for s in servers}
    mem = {s: sum(c.devices[i].memory for i in gpus[s]) for s in servers}
    # each server takes about its share of the load (by compute): as balanced as round-robin,
    # so locality does not buy fewer hops with hot GPUs
    total = sum(w.demand.get(b, 0.0) for b in w.sizes)
    speed = {s: sum(c.devices[i].speed for i in gpus[s]) for s in servers}
    cap = {s: total * speed[s] / sum(speed.values()) * (1 + slack) for s in servers}
    order: dict[int, list[str]] = {s: [] for s in servers}
    home: dict[str, int] = {}
    for chain in _chains_by_rate(w):
        prev = None
        for b in chain:
            if b not in home:
                need, load = w.sizes[b], w.demand.get(b, 0.0)
                fits = [s for s in servers if mem[s] >= need]
                if not fits:
                    raise PlacementError(f"block {b[:12]} ({need} bytes) fits no server")
                if prev is not None and prev in fits and cap[prev] >= load:
                    s = prev
                else:
                    s = max(fits, key=lambda x: (cap[x], -x))
                home[b], mem[s], cap[s] = s, mem[s] - need, cap[s] - load
                order[s].append(b)
            prev = home[b]
    placed: Placement = {}
    free = [d.memory for d in c.devices]
    util = [0.0] * len(c.devices)
    pass_s = _pass_seconds(w)
    for s in servers:
        ids, blocks = gpus[s], order[s]
        if not blocks:
            continue
        hop = c.transfer_s(ids[0], ids[-1], w.hop_bytes)  # 0.0 with one GPU
        spread = sum(pass_s.get(b, 0.0) for b in blocks) / len(blocks) > hop
        for b, d in (_interleave if spread else _spans)(blocks, ids, w, free).items():
            placed[b] = (d,)
            util[d] += w.demand.get(b, 0.0) / c.devices[d].speed
    return add_replicas(placed, w, c, replicas_needed(w, len(c.devices), target_util), util)


def add_replicas(placed: Placement, w: Workload, c: Cluster, wanted: Mapping[str, int],
                 util: list[float] | None = None) -> Placement:
    """`placed` with more replicas: block b gets up to wanted[b] in all (one per device), each
    on the least busy device with room that has none yet. `util`: each device's busy fraction
    (default: from `placed`, each block's demand on each of its replicas)."""
    placed = dict(placed)
    free = [d.memory - u for d, u in zip(c.devices, memory_used(placed, w.sizes, len(c.devices)),
                                         strict=True)]
    if util is None:
        util = [0.0] * len(c.devices)
        for b, hosts in placed.items():
            for d in hosts:
                util[d] += w.demand.get(b, 0.0) / len(hosts) / c.devices[d].speed
    for b, n in wanted.items():
        share = w.demand.get(b, 0.0) / n
        while len(placed[b]) < n:
            room = [i for i in range(len(c.devices)) if i not in placed[b]
                    and free[i] >= w.sizes[b]]
            if not room:
                break  # fewer replicas than wished: memory is full
            d = min(room, key=lambda i: (util[i], i))
            placed[b] += (d,)
            free[d] -= w.sizes[b]
            util[d] += share / c.devices[d].speed
    return placed


def _pass_seconds(w: Workload) -> dict[str, float]:
    """Each block's busy seconds per pass through it (its demand over its passes per second)."""
    passes: dict[str, float] = {}
    for m, chain in w.chains.items():
        for b in chain:
            passes[b] = passes.get(b, 0.0) + w.chain_rates.get(m, 0.0)
    return {b: w.demand.get(b, 0.0) / n for b, n in passes.items() if n > 0}


def _spans(blocks: list[str], ids: list[int], w: Workload, free: list[int]) -> dict[str, int]:
    """Contiguous spans of about equal load, one per GPU of `ids` (updates `free`)."""
    total = sum(w.demand.get(b, 0.0) for b in blocks) or 1.0
    out, k, acc = {}, 0, 0.0
    for b in blocks:
        while k < len(ids) - 1 and (acc >= total / len(ids) * (k + 1) or
                                    free[ids[k]] < w.sizes[b]):
            k += 1
        out[b] = _take(ids[k], ids, b, w, free)
        acc += w.demand.get(b, 0.0)
    return out


def _interleave(blocks: list[str], ids: list[int], w: Workload,
                free: list[int]) -> dict[str, int]:
    """Block j to GPU j mod len(ids) (updates `free`)."""
    return {b: _take(ids[j % len(ids)], ids, b, w, free) for j, b in enumerate(blocks)}


def _take(d: int, ids: list[int], b: str, w: Workload, free: list[int]) -> int:
    """GPU `d` for block b if it has room, else the server's GPU with the most room."""
    if free[d] < w.sizes[b]:
        d = max(ids, key=lambda i: (free[i], -i))
        if free[d] < w.sizes[b]:
            raise PlacementError(f"block {b[:12]} fits no GPU of its server (GPU {d})")
    free[d] -= w.sizes[b]
    return d


def _chains_by_rate(w: Workload) -> list[tuple[str, ...]]:
    """Chains, most requested first; blocks no chain names follow as chains of one."""
    chains = sorted(w.chains.items(), key=lambda kv: (-w.chain_rates.get(kv[0], 0.0), kv[0]))
    out = [tuple(ch) for _, ch in chains]
    named = {b for ch in out for b in ch}
    return out + [(b,) for b in sorted(w.sizes) if b not in named]


def round_robin(w: Workload, c: Cluster) -> Placement:
    """Blocks in id order, one replica each, on the next device with room."""
    free = [d.memory for d in c.devices]
    placed, d = {}, 0
    for b in sorted(w.sizes):
        for step in range(len(free)):
            k = (d + step) % len(free)
            if free[k] >= w.sizes[b]:
                placed[b], free[k], d = (k,), free[k] - w.sizes[b], k + 1
                break
        else:
            raise PlacementError(f"block {b[:12]} fits no device")
    return placed


def random_placement(w: Workload, c: Cluster, seed: int = 0) -> Placement:
    """One replica each on a random device with room (seeded)."""
    rng = random.Random(seed)
    free = [d.memory for d in c.devices]
    placed = {}
    for b in sorted(w.sizes):
        fits = [k for k in range(len(free)) if free[k] >= w.sizes[b]]
        if not fits:
            raise PlacementError(f"block {b[:12]} fits no device")
        k = rng.choice(fits)
        placed[b], free[k] = (k,), free[k] - w.sizes[b]
    return placed


PLACEMENTS = {"locality": locality_aware, "round_robin": round_robin, "random": random_placement}


def route(chain: list[str], placement: Placement, c: Cluster, hop_bytes: float,
          start: int | None = None, kv_home: Mapping[str, int] | None = None,
          busy_s: Mapping[int, float] | None = None) -> list[int]:
    """The device of each hop of one pass. A block where the request holds KV goes to that
    replica (its cache is there); otherwise the replica with the least transfer from the
    previous hop plus its queued work (`busy_s`)."""
    out, prev = [], start
    for b in chain:
        hosts = placement[b]
        if kv_home and b in kv_home and kv_home[b] in hosts:
            d = kv_home[b]
        else:
            d = min(hosts, key=lambda h: ((c.transfer_s(prev, h, hop_bytes) if prev is not None
                                           else 0.0) + (busy_s or {}).get(h, 0.0), h))
        out.append(d)
        prev = d
    return out


def select(scores: Mapping[str, tuple[float, float]], slack: float = 0.05) -> str:
    """The objective "transfer time plus queueing", by measurement: `scores` maps each
    candidate placement to (p95 latency, transfer seconds) from replaying history on it (the
    cluster simulator). Among the candidates within `slack` of the best p95, the one that moves
    the least data between devices; ties by name."""
    best = min(p95 for p95, _ in scores.values())
    ok = [n for n, (p95, _) in scores.items() if p95 <= best * (1 + slack)]
    return min(ok, key=lambda n: (scores[n][1], n))


def memory_used(placement: Placement, sizes: Mapping[str, int], n_devices: int) -> list[int]:
    used = [0] * n_devices
    for b, hosts in placement.items():
        for d in hosts:
            used[d] += sizes[b]
    return used

