"""One endpoint in front of a deployment of OpenAI-compatible servers (one per model or per
LoRA group): each request goes to its model's server by the `model` field, so the harness sees
one server, as with blockllm.

Where the servers do not all fit the memory budget, the router runs at most as many as fit
and starts one on demand, as an autoscaler would: a request for a stopped server waits; the
least recently used running server with no one waiting for it is drained (no new requests;
it stops when its last one ends), then the wanted server starts (its cold start, 40-120 s for
vLLM on a CPU, is part of what per-model serving costs). One server drains at a time, so a
busy server is never stopped under a request, and every model gets its turn.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from baselines.vllm_deploy import ServerSpec
from experiments.server_proc import free_port

# (spec, slot, port) -> (argv after the python, env additions); the python is `python`
Launch = Callable[[ServerSpec, int, int], tuple[list[str], dict[str, str]]]


@dataclass(eq=False)
class Backend:
    spec: ServerSpec
    state: str = "stopped"  # stopped | starting | ready | draining | failed
    proc: subprocess.Popen | None = None
    url: str = ""
    slot: int = -1  # which share of the cores it runs on
    inflight: int = 0  # requests being forwarded to it
    waiting: int = 0  # requests waiting for it to be ready
    last_used: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: str = ""


class Router:
    def __init__(self, specs: list[ServerSpec], slots: int, budget: int, python: Path,
                 launch: Launch, log_dir: Path, start_timeout_s: float = 900):
        self.backends = [Backend(s) for s in specs]
        self.owner = {m: b for b in self.backends for m in b.spec.models}
        self.slots, self.budget, self.python, self.launch = slots, budget, python, launch
        self.log_dir, self.start_timeout_s = log_dir, start_timeout_s
        self.cond = asyncio.Condition()
        self.pending: list[Backend] = []  # stopped servers requests wait for, in order asked
        self.client = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None))
        self.counters = {"starts": 0, "start_seconds": 0.0, "stops": 0, "max_running": 0}

    # ---- residency ----------------------------------------------------------------------

    def _running(self) -> list[Backend]:
        return [b for b in self.backends if b.state in ("starting", "ready", "draining")]

    def _fits(self, b: Backend) -> bool:
        used = sum(x.spec.weight_bytes for x in self._running())
        return len(self._running()) < self.slots and used + b.spec.weight_bytes <= self.budget

    def _launch(self, b: Backend) -> None:
        taken = {x.slot for x in self._running()}
        b.slot = next(i for i in range(self.slots) if i not in taken)
        port = free_port()
        argv, env = self.launch(b.spec, b.slot, port)
        log = open(self.log_dir / f"{b.spec.name}.log", "ab")
        b.proc = subprocess.Popen([str(self.python), *argv], env={**os.environ, **env},
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        b.url, b.state, b.ready = f"http://127.0.0.1:{port}", "starting", asyncio.Event()
        self.counters["max_running"] = max(self.counters["max_running"], len(self._running()))
        asyncio.get_running_loop().create_task(self._await_ready(b, time.perf_counter()))

    async def _await_ready(self, b: Backend, t0: float) -> None:
        while True:
            try:
                if (await self.client.get(b.url + "/health", timeout=2)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if b.proc.poll() is not None or time.perf_counter() - t0 > self.start_timeout_s:
                await asyncio.to_thread(self._kill, b)
                log = (self.log_dir / f"{b.spec.name}.log").read_text(errors="replace")
                why = [ln for ln in log.splitlines() if "Error:" in ln][-1:] or [log[-1500:]]
                b.error = f"server {b.spec.name} did not start ({self.log_dir}): {why[0]}"
                async with self.cond:
                    b.state = "failed"
                    b.ready.set()
                    self.cond.notify_all()
                return
            await asyncio.sleep(0.5)
        async with self.cond:
            self.counters["starts"] += 1
            self.counters["start_seconds"] += time.perf_counter() - t0
            b.state, b.last_used = "ready", time.perf_counter()
            b.ready.set()
            self.cond.notify_all()

    @staticmethod
    def _kill(b: Backend) -> None:
        """SIGTERM the server's process group (vLLM's API and engine processes), then KILL."""
        if b.proc is None or b.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(b.proc.pid, sig)
                b.proc.wait(timeout=wait)
                return
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue

    async def _stop(self, b: Backend) -> None:
        await asyncio.to_thread(self._kill, b)
        async with self.cond:
            b.state, b.proc, b.slot = "stopped", None, -1
            self.counters["stops"] += 1
            self.cond.notify_all()

    def _drain_one(self, want: Backend) -> None:
        """Pick the victim for `want`: least recently used ready server, preferring those no
        request waits for; it stops when idle (see `release`)."""
        if any(b.state == "draining" for b in self.backends):
            return
        ready = [b for b in self.backends if b.state == "ready" and b is not want]
        if not ready:
            return
        victim = min(ready, key=lambda b: (b.waiting > 0, b.last_used))
        victim.state = "draining"
        victim.ready = asyncio.Event()  # new requests for it wait for its restart
        if victim.inflight == 0:
            asyncio.get_running_loop().create_task(self._stop(victim))

    async def acquire(self, model: str) -> Backend:
        """The ready server of `model`, started (and another drained) first if need be."""
        # asyncio: nothing below runs concurrently between two awaits, so the state checks and
        # the inflight count cannot race
        b = self.owner[model]
        async with self.cond:
            b.waiting += 1
            try:
                while b.state not in ("ready", "starting", "failed"):
                    if b.state == "stopped":  # starts wait in line, first asked first started
                        if b not in self.pending:
                            self.pending.append(b)
                        if self.pending[0] is b:
                            if self._fits(b):
                                self.pending.pop(0)
                                self._launch(b)
                                break
                            self._drain_one(b)
                    await self.cond.wait()
            finally:
                b.waiting -= 1
        await b.ready.wait()
        if b.state == "failed":
            raise RuntimeError(b.error)
        if b.state != "ready":  # drained while this request waited: go around again
            return await self.acquire(model)
        b.inflight += 1
        return b

    async def release(self, b: Backend) -> None:
        async with self.cond:
            b.inflight -= 1
            b.last_used = time.perf_counter()
            if b.state == "draining" and b.inflight == 0:
                asyncio.get_running_loop().create_task(self._stop(b))
            self.cond.notify_all()

    async def start_initial(self) -> None:
        """Start every server that fits at once (in order) and wait until they answer."""
        async with self.cond:
            for b in self.backends:
                if self._fits(b):
                    self._launch(b)
        for b in self.backends:
            if b.state != "stopped":
                await b.ready.wait()
                if b.state == "failed":
                    raise RuntimeError(b.error)

    async def close(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(self._kill, b) for b in self.backends))
        await self.client.aclose()

    def kill_all(self) -> None:
        """Synchronous last resort (atexit): no server outlives the router."""
        for b in self.backends:
            self._kill(b)


if __name__ == "__main__":
    sys.exit("run `python -m baselines.vllm_server`")
