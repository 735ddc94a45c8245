"""A real `blockllm serve` process on a free localhost port for the server tests."""

from __future__ import annotations

import contextlib

from experiments.server_proc import server_process


@contextlib.contextmanager
def live_server(zoo_root, models: list[str], *args: str, env: dict | None = None):
    argv = ["-m", "blockllm.cli", "serve", "--zoo", str(zoo_root), "--models", ",".join(models),
            *args]
    with server_process(argv, env, timeout_s=120) as served:
        yield served
