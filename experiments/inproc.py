"""Replay a trace on an Engine in this process: the real engine without the HTTP server.

Used where the server cannot run or would hide what is measured: the simulator's validation
(engine alone vs simulator, beside the HTTP numbers), and GPU machines without the server's
packages. Requests are submitted at their trace times (the loop checks arrivals between
steps); latencies count from the scheduled arrival, as the HTTP harness does.
"""

from __future__ import annotations

import time
from collections import deque

from blockllm.runtime.engine import Engine
from blockllm.runtime.request import State


def replay_engine(engine: Engine, trace: dict, prompts: dict[int, list[int]],
                  stop_at_eos: bool = False) -> list[dict]:
    """One record per request: i, model, ttft, e2e, tokens, finish (seconds from arrival).

    `prompts`: token ids of each request (by its index). Without `stop_at_eos`, every request
    generates exactly its max_tokens (dummy weights would stop at random)."""
    todo = deque(sorted(trace["requests"], key=lambda r: r["t"]))
    live = []
    t0 = time.perf_counter()
    while todo or engine.has_work():
        now = time.perf_counter() - t0
        while todo and todo[0]["t"] <= now:
            r = todo.popleft()
            stop = None if stop_at_eos else frozenset()
            live.append((r, engine.submit(r["model"], prompts[r["i"]],
                                          max_tokens=r["max_tokens"], stop_ids=stop)))
        if engine.has_work():
            engine.step()
        elif todo:
            time.sleep(min(0.005, max(0.0, todo[0]["t"] - now)))
    out = []
    for r, req in live:
        assert req.state is State.FINISHED
        arrival = t0 + r["t"]
        times = req.token_times
        out.append({"i": r["i"], "model": r["model"], "tokens": len(req.output),
                    "finish": req.finish_reason,
                    "ttft": times[0] - arrival if times else None,
                    "e2e": times[-1] - arrival if times else None})
    return out


def counters_since(engine: Engine, before: dict) -> dict:
    """What the engine's counters grew by since `before` (a copy taken earlier)."""
    return {k: v - before[k] for k, v in engine.counters.items()}


def warm_replay(engine: Engine, trace: dict, prompts: dict[int, list[int]]
                ) -> tuple[list[dict], dict]:
    """Replay once unmeasured (every block loaded, every kernel shape met: oneDNN and CUDA
    libraries pay for a new shape once), then again: its records and counter growth."""
    replay_engine(engine, trace, prompts)
    before = dict(engine.counters)
    return replay_engine(engine, trace, prompts), counters_since(engine, before)
