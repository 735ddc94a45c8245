"""The zoo's small pieces on disk: its errors, its statistics, where it lives, durable
directory writes and the crash-safety tests' pause points (used by store.py)."""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from blockllm.errors import UserError

__all__ = ["ZooError", "CorruptBlock", "ZooStats", "default_zoo_dir"]


class ZooError(UserError):
    """A zoo problem the user can fix; the message says how."""


class CorruptBlock(ZooError):
    pass


HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ZooStats:
    models: int
    distinct_blocks: int
    unique_bytes: int  # sum of distinct referenced blocks' tensor bytes: the storage bound
    logical_bytes: int  # what storing every model whole would take
    disk_bytes: int  # block files + manifest + tokenizers actually on disk


def default_zoo_dir() -> Path:
    return Path(os.environ.get("BLOCKLLM_ZOO") or Path.home() / ".cache" / "blockllm" / "zoo")


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fault_point(name: str) -> None:
    """Crash-safety tests pause a real `zoo add` or `zoo gc` here and kill it
    (BLOCKLLM_FAULT=name:FILE)."""
    spec = os.environ.get("BLOCKLLM_FAULT", "")
    if spec.partition(":")[0] == name:
        import time
        Path(spec.partition(":")[2]).touch()
        time.sleep(600)
