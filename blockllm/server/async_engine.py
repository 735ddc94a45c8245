"""The engine on a background thread, fed by the asyncio server.

One lock guards the engine: the thread holds it for each `step()`, request handlers hold it to
submit or abort. Token and finish events cross to the event loop with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import threading
import time

from blockllm.runtime.engine import Engine
from blockllm.runtime.request import Request


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._queues: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.finish_hooks: list = []  # called with each finished request (engine thread)
        engine.on_token = self._on_token
        engine.on_finish = self._on_finish
        self.thread = threading.Thread(target=self._loop, name="blockllm-engine", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop:
            with self.lock:
                busy = self.engine.has_work()
                if busy:
                    try:
                        self.engine.step()
                    except BaseException as e:  # a bug: fail every request, keep serving
                        self.error = e
                        for r in list(self.engine.running.values()) + list(self.engine.waiting):
                            self.engine.abort(r, f"error: internal engine error: {e!r}")
            if not busy:
                self._wake.wait(0.05)
                self._wake.clear()
            else:
                time.sleep(0)  # let handlers take the lock between steps

    def _push(self, req: Request, event) -> None:
        entry = self._queues.get(req.id)
        if entry is not None:
            loop, q = entry
            loop.call_soon_threadsafe(q.put_nowait, event)

    def _on_token(self, req: Request, token: int) -> None:
        self._push(req, ("token", token))

    def _on_finish(self, req: Request) -> None:
        self._push(req, ("finish", req.finish_reason))
        self._queues.pop(req.id, None)
        for hook in self.finish_hooks:
            hook(req)

    def submit(self, model: str, prompt: list[int], params, max_tokens: int,
               stop_ids=None, min_tokens: int = 0) -> tuple[Request, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        with self.lock:
            req = self.engine.submit(model, prompt, params, max_tokens, stop_ids, min_tokens)
            self._queues[req.id] = (loop, q)
        self._wake.set()
        return req, q

    def abort(self, req: Request) -> None:
        with self.lock:
            self.engine.abort(req)
