"""Replay a trace against an OpenAI-compatible server and record every request.

An async client (httpx) sends each request at its trace time with streaming on and records
TTFT, inter-token latencies, TPOT, end-to-end latency, tokens and status. Every request asks
for exactly its trace's output length (`ignore_eos`, as `vllm bench serve --ignore-eos` does),
so every system does the same work; the server's usage says how many tokens it generated.
A sampler thread records device utilization every 100 ms: NVML (GPU utilization, memory) when
a GPU is present, otherwise the CPU utilization and memory (PSS) of the server's whole process
tree (a vLLM deployment is a router, several servers and their engine processes), and says
which.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Record:
    i: int
    model: str
    arrival: float  # trace time (s)
    sent: float = 0.0  # wall time sent, relative to the replay start
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)  # inter-token latencies
    e2e: float | None = None
    requested: int = 0  # max_tokens of the trace (ignore_eos: every system should give these)
    tokens: int = 0  # completion tokens, as the server's usage reports them
    status: str = "ok"

    @property
    def tpot(self) -> float | None:
        return sum(self.itl) / len(self.itl) if self.itl else None


async def _one(client: httpx.AsyncClient, url: str, req: dict, rec: Record, t0: float) -> None:
    await asyncio.sleep(max(0.0, t0 + req["t"] - time.perf_counter()))
    start = time.perf_counter()
    rec.sent = start - t0
    body = {"model": req["model"], "prompt": req["prompt"], "max_tokens": req["max_tokens"],
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    last = start
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                try:
                    body = json.loads(body)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    pass
                rec.status = f"http {resp.status_code}: {body[:200]}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    rec.status = "error: " + chunk["error"]["message"][:100]
                    continue
                if not chunk["choices"]:  # the usage chunk: the server's own token count
                    rec.tokens = chunk["usage"]["completion_tokens"]
                    continue
                now = time.perf_counter()
                if chunk["choices"][0]["text"] or chunk["choices"][0]["finish_reason"] is None:
                    if rec.ttft is None:
                        rec.ttft = now - start
                    else:
                        rec.itl.append(now - last)
                    last = now
        rec.e2e = time.perf_counter() - start
    except httpx.HTTPError as e:
        rec.status = f"error: {type(e).__name__}"


async def replay(url: str, trace: dict, timeout_s: float = 600) -> list[Record]:
    recs = [Record(r["i"], r["model"], r["t"], requested=r["max_tokens"])
            for r in trace["requests"]]
    limits = httpx.Limits(max_connections=len(recs) + 1)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(_one(client, url, r, rec, t0)
                               for r, rec in zip(trace["requests"], recs)))
    return recs


def process_rss(pid: int) -> int:
    """Resident bytes of a process (Linux /proc)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, PSS bytes) of a process and all its descendants. PSS splits shared pages
    between the processes that map them, so a tree's sum counts torch's libraries once, not
    once per process; CPU seconds of descendants that exited since the last call are lost
    (servers stopped by a router: a small undercount)."""
    import psutil
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess as e:
        raise ProcessLookupError(pid) from e
    cpu, mem = 0.0, 0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            mem += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return cpu, mem


class Sampler(threading.Thread):
    """Utilization every `period` s: NVML on a GPU, else the server tree's CPU and PSS."""

    def __init__(self, pid: int, period: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.period, self.samples = pid, period, []
        self._stop_event = threading.Event()
        self.kind = "cpu-process-tree"
        self._nvml = None
        try:
            import pynvml
            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                self._nvml = pynvml
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                self.kind = "nvml-gpu0"
        except Exception:  # no driver, no GPU: the CPU fallback is the documented behaviour
            self._nvml = None

    def run(self) -> None:
        last_t, last_cpu = time.perf_counter(), tree_usage(self.pid)[0] if not self._nvml else 0
        while not self._stop_event.wait(self.period):
            now = time.perf_counter()
            try:
                if self._nvml:
                    u = self._nvml.nvmlDeviceGetUtilizationRates(self.handle)
                    m = self._nvml.nvmlDeviceGetMemoryInfo(self.handle)
                    self.samples.append({"t": now, "util": u.gpu / 100, "mem": m.used})
                else:
                    cpu, mem = tree_usage(self.pid)
                    cores = os.cpu_count() or 1
                    util = max(0.0, cpu - last_cpu) / max(1e-9, now - last_t) / cores
                    self.samples.append({"t": now, "util": util, "mem": mem})
                    last_cpu = cpu
            except (OSError, ValueError, ImportError):
                break  # the process is gone
            last_t = now

    def stop(self) -> list[dict]:
        self._stop_event.set()
        self.join(timeout=5)
        return self.samples
