"""KV coordination across the per-block paged pools: integer bookkeeping only.

Every decoder block (key) has its own `PageTable`. A request's pass needs room for its new
tokens in every decoder block of its chain. Coordinated mode reserves that room in all of them
at once, before the pass starts, or not at all: a request never holds KV in one block while
waiting for pages in another, so requests cannot deadlock. Uncoordinated mode (the ablation)
reserves block by block as the request arrives, and relies on preemption when it gets stuck.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from blockllm.models.kv_cache import PageTable


class KVManager:
    def __init__(self, pages: dict[Hashable, int], page_size: int):
        """pages: number of pages of each decoder block's pool."""
        self.page_size = page_size
        self.tables = {k: PageTable(n, page_size) for k, n in pages.items()}

    @classmethod
    def split(cls, page_bytes: dict[Hashable, int], budget: int, page_size: int,
              load: dict[Hashable, float] | None = None) -> KVManager:
        """`budget` bytes of KV over the pools of the keys of `page_bytes` (bytes of one page
        of each block: all its layers), at least one page each. `load`: the sequences each
        pool holds per sequence of a pool used by one model (its sharing degree): pages in
        proportion to it, since a block that five models' chains run holds five models'
        sequences. None: the same pages in each pool."""
        load = load or dict.fromkeys(page_bytes, 1.0)
        unit = budget / max(1, sum(load[k] * b for k, b in page_bytes.items()))
        return cls({k: max(1, int(unit * load[k])) for k in page_bytes}, page_size)

    def fits(self, req: int, keys: Sequence[Hashable], n_tokens: int) -> bool:
        return all(self.tables[k].can_append(req, n_tokens) for k in keys)

    def could_fit(self, keys: Sequence[Hashable], n_tokens: int) -> bool:
        """n_tokens of one sequence would fit every pool of `keys` were it empty."""
        return all(-(-n_tokens // self.page_size) <= self.tables[k].num_pages for k in keys)

    def reserve(self, req: int, keys: Sequence[Hashable], n_tokens: int) -> bool:
        """Room for n_tokens more tokens of `req` in every block of `keys`, or no change."""
        if not self.fits(req, keys, n_tokens):
            return False
        for k in keys:
            self.tables[k].append(req, n_tokens)
        return True

    def shortest(self, keys: Sequence[Hashable], req: int, n_tokens: int) -> list[Hashable]:
        """The blocks among `keys` that lack room for `req`'s n_tokens."""
        return [k for k in keys if not self.tables[k].can_append(req, n_tokens)]

    def holders(self, key: Hashable) -> list[int]:
        """Requests holding pages in block `key`."""
        return self.tables[key].sequences()

    def free(self, req: int) -> None:
        """Every page `req` holds, in every block."""
        for table in self.tables.values():
            table.free(req)

    def used_pages(self, key: Hashable) -> int:
        t = self.tables[key]
        return t.num_pages - t.free_pages


def kv_pools(engine) -> KVManager:
    """The engine's KV pools: one per decoder key (replica), within `kv_budget` bytes. Pages
    per pool the same everywhere, or with `kv_by_sharing` in proportion to each key's sharing
    degree (the served models whose chains run its block, over the replicas splitting them)."""
    import torch
    cfg = engine.cfg
    elem = torch.empty((), dtype=engine.dtype).element_size()
    page_bytes = {}
    for k, (e, m) in engine.entry_of.items():
        row, mc = engine.info[e.block], engine.models[m]
        if row.kind == "decoder":  # K and V of all its layers
            page_bytes[k] = 2 * cfg.page_size * mc.num_key_value_heads * mc.head_dim * \
                row.signature["n_layers"] * elem
    load = sharing_degree(engine, page_bytes) if cfg.kv_by_sharing else None
    return KVManager.split(page_bytes, cfg.kv_budget, cfg.page_size, load)


def sharing_degree(engine, keys) -> dict:
    """Each replica key's sharing degree: the served models whose chains (exact or
    equivalent) run its block, over the replicas that split them."""
    users: dict = {}
    for m in engine.models:
        for k in {k for k, _ in engine.all_entries(m)}:
            users[k] = users.get(k, 0) + 1
    return {k: users[k.base] / len(engine.replicas[k.base]) for k in keys}
