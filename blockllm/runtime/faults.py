"""Fault injection for the reliability tests: BLOCKLLM_FAULT=block-run:N makes the N-th block
call of the process raise (once), as a worker that dies mid-batch would; slow-read:S makes
every background block read take S seconds longer, as a slow disk would. Off unless set."""

from __future__ import annotations

import itertools
import os

_calls = itertools.count(1)


class InjectedFault(RuntimeError):
    pass


def maybe_slow_read() -> None:
    kind, _, s = os.environ.get("BLOCKLLM_FAULT", "").partition(":")
    if kind == "slow-read":
        import time
        time.sleep(float(s))


def maybe_inject_fault() -> None:
    kind, _, n = os.environ.get("BLOCKLLM_FAULT", "").partition(":")
    if kind == "block-run" and next(_calls) == int(n):
        raise InjectedFault(f"injected fault at block call {n}")
