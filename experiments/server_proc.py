"""A server process on a free localhost port, started and stopped around a block of work."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx


def metric(text: str, name: str) -> float | None:
    """Sum of a sample's values over all its label sets in Prometheus text (`name` as the
    sample is named, e.g. blockllm_preemptions_total); None if it is absent."""
    from prometheus_client.parser import text_string_to_metric_families
    values = [s.value for family in text_string_to_metric_families(text)
              for s in family.samples if s.name == name]
    return sum(values) if values else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(argv: list[str], env: dict | None = None, timeout_s: float = 180
                   ) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python ARGV --port P` until /health answers; yields (url, process); stops it after.

    Its stderr goes to a temporary file, not a pipe: a pipe nobody reads while the server runs
    fills at 64 KiB and then blocks the server's next log line (a hang, not an error)."""
    port = free_port()
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, *argv, "--port", str(port)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                err.seek(0)
                raise RuntimeError(f"server {' '.join(argv[:3])} did not start: "
                                   f"{err.read().decode(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()
