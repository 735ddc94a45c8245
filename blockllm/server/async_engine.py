"""The engine on its own thread, fed by the asyncio server through queues: the event loop never
waits for a step.

All engine state belongs to the engine thread, and every tensor op runs on it: the engine is
built and warmed up there too. (Measured: an engine warmed up on the main thread and stepped
on another one ran at TPOT p50 147 ms where the same replay on one thread ran at 89-96 ms:
torch's OpenMP pool belongs to the thread that first used it.)

A handler A handler checks what it can check alone
(`Engine.check`: the model, the prompt's length, the backlog) and answers a bad request at
once; then it puts a `Ticket` on the inbox and returns. The engine thread drains the inbox at
the top of each step: it creates the request, runs aborts, and sends tokens and finish events
back through each ticket's asyncio queue (call_soon_threadsafe). What /metrics reads is a
snapshot the engine thread publishes after each step, so a long step (a cold block load, a
first profile) never stalls /health, /metrics or other requests' streams.

Measured before this (one lock held by the thread for each step, taken by handlers to
submit): the event loop spent 23% of its time waiting for the lock under 2 req/s, and
requests waited to be submitted while the engine ran with half-empty batches.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from blockllm.runtime.engine import Engine
from blockllm.runtime.request import Request


@dataclass(eq=False)
class Ticket:
    """A request as the handler sees it: its events queue, and the engine's Request once the
    engine thread has created it."""
    model: str
    prompt: list[int]
    args: tuple  # params, max_tokens, stop_ids, min_tokens
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    req: Request | None = None
    aborted: bool = False


# How long a Python thread may hold the GIL while another waits for it (Python's default is 5
# ms). The engine thread releases the GIL inside every torch op and must take it back after
# each; while the event loop thread works (parsing, streaming 60 clients' tokens), each of
# those hand-backs waited up to the whole interval. Measured with `vllm bench serve`, one
# model, 2 req/s on 2 cores: TPOT p50 88-103 -> 70-73 ms (the engine alone, in process: 68).
GIL_SWITCH_S = 0.0002


def share_gil_finely() -> None:
    """Set the process's GIL switch interval for a server whose model runs on a thread of its
    own (see GIL_SWITCH_S); the server entry points call it before starting."""
    import sys
    sys.setswitchinterval(GIL_SWITCH_S)


class AsyncEngine:
    def __init__(self, make_engine: Callable[[], Engine]):
        """`make_engine` runs on the engine thread (it builds and warms up the engine)."""
        self.make_engine = make_engine
        self.engine: Engine | None = None  # set by start(); its config and chains are
        #                                    read-only, any thread may read them
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("submit"|"abort", ticket)
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._stop = False
        self._tickets: dict[int, Ticket] = {}  # request id -> its ticket (engine thread)
        self.finish_hooks: list = []  # called with each finished request (engine thread)
        self.snapshot: dict = {}  # published by the engine thread after every step
        self.thread = threading.Thread(target=self._run, name="blockllm-engine", daemon=True)
        self.error: BaseException | None = None  # a failed start, or a bug in a step

    def start(self) -> Engine:
        """Build the engine on its thread; returns it once it is ready, or raises what
        building it raised."""
        self.thread.start()
        self._ready.wait()
        if self.engine is None:
            raise self.error
        return self.engine

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self.thread.join(timeout=10)

    # ---- the engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            engine = self.make_engine()
        except BaseException as e:  # noqa: BLE001 - start() raises it on the caller's thread
            self.error = e
            self._ready.set()
            return
        engine.on_token, engine.on_finish = self._on_token, self._on_finish
        self.snapshot = engine.snapshot()
        self.engine = engine
        self._ready.set()
        self._loop()

    def _loop(self) -> None:
        try:
            while not self._stop:
                try:
                    drained = self._drain()
                    busy = self.engine.has_work()
                    if busy:
                        self.engine.step()
                except BaseException as e:  # a bug: fail every request, keep serving
                    self.error = e
                    self._fail_all(f"error: internal engine error: {e!r}")
                    busy, drained = False, True
                if busy or drained:
                    self.snapshot = self.engine.snapshot()
                if not busy:
                    self._wake.wait(0.05)
                    self._wake.clear()
        finally:  # the thread ends (stop, or a failure above): nobody else would answer them
            self._fail_all("error: the engine stopped")

    def _fail_all(self, reason: str) -> None:
        """End every request the engine holds and answer every ticket still waiting."""
        sched = self.engine.sched
        for r in list(sched.running.values()) + list(sched.waiting):
            try:
                self.engine.abort(r, reason)
            except Exception:  # noqa: BLE001 - its ticket is answered below all the same
                pass
        for t in list(self._tickets.values()):
            self._send(t, ("finish", reason))
        self._tickets.clear()

    def _drain(self) -> bool:
        """Submissions and aborts handed over since the last step; True if there were any."""
        drained = False
        while True:
            try:
                kind, t = self.inbox.get_nowait()
            except queue.Empty:
                return drained
            drained = True
            if kind == "abort":
                t.aborted = True
                if t.req is not None:
                    self.engine.abort(t.req)
            elif not t.aborted:
                try:
                    t.req = self.engine.submit(t.model, t.prompt, *t.args)
                except Exception as e:  # noqa: BLE001 - e.g. Busy: the handler reports it
                    self._send(t, ("finish", e))
                    continue
                self._tickets[t.req.id] = t

    def _push(self, req: Request, event) -> None:
        t = self._tickets.get(req.id)
        if t is not None:
            self._send(t, event)

    @staticmethod
    def _send(t: Ticket, event) -> None:
        try:
            t.loop.call_soon_threadsafe(t.events.put_nowait, event)
        except RuntimeError:  # its event loop is closed: nobody is listening any more
            pass

    def _on_token(self, req: Request, token: int) -> None:
        """("token", (id, its TokenLogprob or None)): the logprob travels with its token."""
        self._push(req, ("token", (token, req.logprobs[-1] if req.params.logprobs is not None
                                   else None)))

    def _on_finish(self, req: Request) -> None:
        self._push(req, ("finish", req.finish_reason))
        self._tickets.pop(req.id, None)
        for hook in self.finish_hooks:
            hook(req)

    # ---- handlers (the event loop): never block -------------------------------------------

    def submit(self, model: str, prompt: list[int], params, max_tokens: int,
               stop_ids=None, min_tokens: int = 0) -> Ticket:
        """Check the request (a UserError or Busy now, for a 4xx), then hand it over."""
        if not self.thread.is_alive():
            raise RuntimeError(f"the engine has stopped ({self.error!r}); restart the server")
        self.engine.check(model, prompt, max_tokens, min_tokens,
                          waiting=self.snapshot["waiting"] + self.inbox.qsize(),
                          scoring=params.prompt_logprobs is not None)
        t = Ticket(model, list(prompt), (params, max_tokens, stop_ids, min_tokens),
                   asyncio.get_running_loop())
        self.inbox.put(("submit", t))
        self._wake.set()
        return t

    def abort(self, ticket: Ticket) -> None:
        self.inbox.put(("abort", ticket))
        self._wake.set()
