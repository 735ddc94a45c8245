"""Discrete-event simulation of block-chain serving on a described cluster.

It runs a trace with the engine's own decisions: placement and routing from
blockllm.runtime.placement, each block's batch limit from blockllm.runtime.batch_policy over
a latency curve, and at each device the engine's rule for what runs next (the queue that
ranks first by scheduler.queue_rank: waves in chain order, stalled queues first; then as
many queued requests as fit the block's limit). What it adds is time: a block call takes its
latency curve's time at the batch's token count, divided by the device's speed; a hop
between devices takes the link's transfer time for the hidden states it carries. Each
request's KV stays on the replica that ran its first pass, and later passes are routed
there (KV affinity).

Latency curves come from measurements (workers.profile_latency) or a roofline model
(`roofline_curve`) for devices we cannot run here; results say which.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from blockllm.runtime.batch_policy import batch_limit
from blockllm.runtime.placement import Cluster, Placement, route
from blockllm.runtime.scheduler import queue_rank, wave_places


def curve_time(curve: Sequence[tuple[int, float]], tokens: int) -> float:
    """Seconds for a call of `tokens` tokens: linear between measured points, extrapolated."""
    pts = sorted(curve)
    if len(pts) == 1:
        return pts[0][1] * max(1, tokens) / pts[0][0]
    i = min(max(bisect_left([n for n, _ in pts], tokens), 1), len(pts) - 1)
    (n0, s0), (n1, s1) = pts[i - 1], pts[i]
    return max(1e-7, s0 + (s1 - s0) * (tokens - n0) / (n1 - n0))


def roofline_curve(weight_bytes: int, flops_per_token: float, mem_bw: float = 1.9e12,
                   flops: float = 150e12, overhead_s: float = 30e-6,
                   sizes: tuple[int, ...] = (1, 8, 32, 128, 512)) -> list[tuple[int, float]]:
    """A block's latency curve from a roofline: weights read once per call, compute per token
    (defaults: A100-80GB at about half its bf16 peak)."""
    return [(n, overhead_s + max(weight_bytes / mem_bw, n * flops_per_token / flops))
            for n in sizes]


@dataclass(frozen=True)
class SimRequest:
    i: int
    model: str
    t: float  # arrival (s)
    prompt_tokens: int
    max_tokens: int


@dataclass
class _State:
    req: SimRequest
    stage: int = 0
    pass_tokens: int = 0
    device: int | None = None
    kv_home: dict[str, int] = field(default_factory=dict)
    done_tokens: int = 0
    first_token: float | None = None
    transfers: int = 0
    network_hops: int = 0
    transfer_s: float = 0.0


@dataclass
class SimResult:
    ttft: dict[int, float]
    e2e: dict[int, float]
    transfers: int  # hops between devices
    transfer_s: float
    busy_s: list[float]  # per device
    makespan: float
    block_busy_s: dict[str, float] = field(default_factory=dict)  # per block: its load history
    calls: int = 0  # block calls (batches) run: the engine's `steps`
    network_hops: int = 0  # hops between servers (the slow network), among `transfers`


def simulate(requests: Sequence[SimRequest], chains: Mapping[str, list[str]],
             curves: Mapping[str, Sequence[tuple[int, float]]], placement: Placement,
             cluster: Cluster, hop_bytes_per_token: float,
             latency_target_s: float | None = None, wave_wait_s: float = 1.0,
             call_overhead_s: float = 0.0,
             first_use_s: Mapping[str, float] | None = None,
             seq_cost_s: Mapping[str, float] | None = None) -> SimResult:
    """Replay `requests`. `call_overhead_s`: the engine's own time per block call (measured:
    Engine counters step_seconds - block_seconds - load_seconds, per step). `first_use_s`:
    a block's cold start on a device (load, hash check, build, latency profile), paid by its
    first call there; devices start empty. `seq_cost_s`: what each sequence of a batch beyond
    the first adds to a block's call (workers.sequence_cost; the curves are per token)."""
    loaded: set[tuple[int, str]] = set()
    seq_cost = seq_cost_s or {}
    limits = {b: batch_limit(c, latency_target_s) for b, c in curves.items()}
    n_dev = len(cluster.devices)
    queues: list[dict[str, list[tuple[float, int, _State]]]] = [{} for _ in range(n_dev)]
    free_at = [0.0] * n_dev
    busy = [0.0] * n_dev
    events: list[tuple[float, int, str, object]] = []
    seq = itertools.count()
    res = SimResult({}, {}, 0, 0.0, busy, 0.0)

    def push(t: float, kind: str, payload) -> None:
        heapq.heappush(events, (t, next(seq), kind, payload))

    def hop(t: float, st: _State) -> None:
        """Send the request to the device of its current block."""
        block = chains[st.req.model][st.stage]
        busy_s = {d: max(0.0, free_at[d] - t) for d in placement[block]}
        [d] = route([block], placement, cluster, hop_bytes_per_token * st.pass_tokens,
                    st.device, st.kv_home, busy_s)
        st.kv_home.setdefault(block, d)
        delay = 0.0
        if st.device is not None and st.device != d:
            delay = cluster.transfer_s(st.device, d, hop_bytes_per_token * st.pass_tokens)
            st.transfers += 1
            st.network_hops += cluster.devices[st.device].server != cluster.devices[d].server
            st.transfer_s += delay
        push(t + delay, "arrive", (d, st))

    def start_device(t: float, d: int) -> None:
        if free_at[d] > t or not any(queues[d].values()):
            return
        heads = [(e, b, q[0]) for e in range(n_dev) for b, q in queues[e].items() if q]
        places = wave_places([(h[2].stage, len(chains[h[2].req.model])) for _, _, h in heads])
        block = min((queue_rank(p, h[0], h[2].req.t, 0.0, t, False, wave_wait_s), b)
                    for (e, b, h), p in zip(heads, places) if e == d)[1]
        q, batch, tokens = queues[d][block], [], 0
        while q and (not batch or tokens + q[0][2].pass_tokens <= limits[block]):
            _, _, st = q.pop(0)
            batch.append(st)
            tokens += st.pass_tokens
        dt = curve_time(curves[block], tokens) + (len(batch) - 1) * seq_cost.get(block, 0.0)
        dt = dt / cluster.devices[d].speed + call_overhead_s
        if first_use_s and (d, block) not in loaded:
            loaded.add((d, block))
            dt += first_use_s.get(block, 0.0)
        free_at[d] = t + dt
        busy[d] += dt
        res.calls += 1
        res.block_busy_s[block] = res.block_busy_s.get(block, 0.0) + dt
        push(t + dt, "done", (d, batch))

    for r in requests:
        push(r.t, "start", _State(r, pass_tokens=r.prompt_tokens))
    while events:
        t, _, kind, payload = heapq.heappop(events)
        if kind == "start":
            hop(t, payload)
        elif kind == "arrive":
            d, st = payload
            st.device = d
            block = chains[st.req.model][st.stage]
            queues[d].setdefault(block, []).append((t, next(seq), st))
            push(t, "kick", d)  # after every arrival of this instant: they batch together
        elif kind == "kick":
            start_device(t, payload)
        else:  # done
            d, batch = payload
            for st in batch:
                st.stage += 1
                if st.stage < len(chains[st.req.model]):
                    hop(t, st)
                    continue
                st.done_tokens += 1  # the head sampled a token
                if st.first_token is None:
                    st.first_token = t
                    res.ttft[st.req.i] = t - st.req.t
                if st.done_tokens >= st.req.max_tokens:
                    res.e2e[st.req.i] = t - st.req.t
                    res.transfers += st.transfers
                    res.network_hops += st.network_hops
                    res.transfer_s += st.transfer_s
                    res.makespan = max(res.makespan, t)
                else:
                    st.stage, st.pass_tokens = 0, 1
                    hop(t, st)
            push(t, "kick", d)
    return res
