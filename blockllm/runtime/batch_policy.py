"""Per-block batch limits from measured latency curves. Pure functions over numbers."""

from __future__ import annotations

from collections.abc import Sequence


def batch_limit(curve: Sequence[tuple[int, float]], target_s: float | None = None,
                knee_fraction: float = 0.9) -> int:
    """The token batch limit for a block whose latency at `tokens` is `seconds`.

    With a latency target: the largest measured batch whose latency stays under it (at least
    the smallest measured batch). Without one: the knee, the smallest batch that reaches
    `knee_fraction` of the best measured throughput (bigger batches only add latency).
    """
    if not curve:
        raise ValueError("no measurements")
    pts = sorted(curve)
    if target_s is not None:
        under = [n for n, s in pts if s <= target_s]
        return max(under) if under else pts[0][0]
    best = max(n / s for n, s in pts)
    return next(n for n, s in pts if n / s >= knee_fraction * best)
