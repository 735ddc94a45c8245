"""Which devices host which blocks, and which replica a request's next hop goes to.

Pure, deterministic functions over sizes, loads and a link-bandwidth model, in the style of
Petals' block selection: the engine, the Ray backend and the cluster simulator all call these,
so what is measured in simulation is what runs.

Locality-aware placement (`locality_aware`) places the busiest blocks first; each replica goes to
the device that minimizes (expected transfer time to the already placed blocks that precede or
follow it in chains, weighted by how often that transition happens) + (a queueing term that
grows as the device's utilization approaches 1), both in seconds of latency per second, among
devices with memory left. Hot blocks get
more replicas (`replicas_needed`). Round-robin and random placement are the ablation baselines.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

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
    hop_bytes: float  # bytes a hop moves (hidden states of one step)


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
    return Workload(dict(sizes), demand, trans, hop_bytes)


def replicas_needed(w: Workload, n_devices: int, target_util: float = 0.7) -> dict[str, int]:
    """Enough replicas that none is busier than `target_util` (at most one per device)."""
    return {b: max(1, min(n_devices, math.ceil(w.demand.get(b, 0.0) / target_util)))
            for b in w.sizes}


def _queue_s(util: float) -> float:
    """Waiting per unit of work at a batched device: small at low load (requests mostly join
    the next call), unbounded near saturation: u^2 / (1 - u)."""
    return util * util / (1.0 - util) if util < 0.999 else 1e3 * (1 + util)


def locality_aware(w: Workload, c: Cluster, target_util: float = 0.7) -> Placement:
    """Greedy locality-aware placement (see the module docstring). Deterministic."""
    reps = replicas_needed(w, len(c.devices), target_util)
    neighbours: dict[str, dict[str, float]] = {b: {} for b in w.sizes}
    for (a, b), rate in w.transitions.items():
        if a != b and a in neighbours and b in neighbours:
            neighbours[a][b] = neighbours[a].get(b, 0.0) + rate
            neighbours[b][a] = neighbours[b].get(a, 0.0) + rate
    free = [d.memory for d in c.devices]
    util = [0.0] * len(c.devices)
    placed: Placement = {}
    order = sorted(w.sizes, key=lambda b: (-w.demand.get(b, 0.0) -
                                           sum(neighbours[b].values()), b))
    for b in order:
        hosts: list[int] = []
        share = w.demand.get(b, 0.0) / reps[b]
        for _ in range(reps[b]):
            best, best_cost = None, math.inf
            for d, dev in enumerate(c.devices):
                if d in hosts or free[d] < w.sizes[b]:
                    continue
                transfer = sum(rate * min(c.transfer_s(r, d, w.hop_bytes) for r in placed[n])
                               for n, rate in neighbours[b].items() if n in placed)
                # both terms in seconds of latency added per second: hops x transfer time,
                # and (busy s/s) x the waiting factor at the device's new utilization
                cost = transfer + share * _queue_s(util[d] + share / dev.speed)
                if cost < best_cost:
                    best, best_cost = d, cost
            if best is None:
                if hosts:
                    break  # fewer replicas than wished: memory is full
                raise PlacementError(f"block {b[:12]} ({w.sizes[b]} bytes) fits no device")
            hosts.append(best)
            free[best] -= w.sizes[b]
            util[best] += share / c.devices[best].speed
        placed[b] = tuple(hosts)
    return placed


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


def memory_used(placement: Placement, sizes: Mapping[str, int], n_devices: int) -> list[int]:
    used = [0] * n_devices
    for b, hosts in placement.items():
        for d in hosts:
            used[d] += sizes[b]
    return used


def migration(old: Placement, new: Placement) -> list[tuple[str, str, int]]:
    """Steps from `old` to `new`, make before break: every ('add', block, device) comes before
    any ('drop', block, device), so each block keeps a serving replica throughout and no
    request is dropped; requests holding KV on a dropped replica finish there first."""
    adds = [("add", b, d) for b in sorted(new) for d in new[b] if d not in old.get(b, ())]
    drops = [("drop", b, d) for b in sorted(old) for d in old[b] if d not in new.get(b, ())]
    return adds + drops
