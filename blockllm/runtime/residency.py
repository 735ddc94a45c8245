"""Which blocks' weights are on the device, under a memory budget, evicted least recently used.

Pure bookkeeping over keys and byte counts; the engine does the loading and freeing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable


class OverBudget(RuntimeError):
    """The blocks one step needs do not fit the budget even with everything else evicted."""


class Residency:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._lru: OrderedDict[Hashable, int] = OrderedDict()  # key -> bytes, oldest first
        self.used = 0  # bytes resident: kept up to date by add/remove (read on every step)
        self.loads = 0
        self.evictions = 0

    def resident(self, key: Hashable) -> bool:
        return key in self._lru

    def keys(self) -> list[Hashable]:
        """Resident keys, least recently used first."""
        return list(self._lru)

    def size(self, key: Hashable) -> int:
        return self._lru[key]

    def plan(self, need: dict[Hashable, int], pinned: Iterable[Hashable] = ()
             ) -> tuple[list[Hashable], list[Hashable]]:
        """(keys to load, keys to evict first) so that all of `need` is resident.

        Never evicts what is needed now or `pinned`; raises OverBudget if it cannot fit."""
        keep = set(need) | set(pinned)
        load = [k for k in need if k not in self._lru]
        free = self.budget - self.used - sum(need[k] for k in load)
        evict = []
        for k, size in self._lru.items():
            if free >= 0:
                break
            if k not in keep:
                evict.append(k)
                free += size
        if free < 0:
            raise OverBudget(f"blocks of {sum(need.values())} bytes do not fit a budget of "
                             f"{self.budget} bytes")
        return load, evict

    def touch(self, keys: Iterable[Hashable]) -> None:
        for k in keys:
            self._lru.move_to_end(k)

    def add(self, key: Hashable, nbytes: int) -> None:
        self.used += nbytes - self._lru.get(key, 0)
        self._lru[key] = nbytes
        self.loads += 1

    def remove(self, key: Hashable) -> None:
        self.used -= self._lru.pop(key)
        self.evictions += 1
