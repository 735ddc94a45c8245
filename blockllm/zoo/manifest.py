"""The zoo manifest: SQLite tables of models, their chains and the distinct blocks.

SQLite gives us atomic multi-row updates: a model, its chain and any new blocks appear in one
transaction or not at all. The block files themselves are content-addressed and written before
the transaction; files no row references are garbage that `Zoo` removes on open.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    id TEXT PRIMARY KEY,          -- sha256 of signature + tensors
    kind TEXT NOT NULL,           -- embed | decoder | head | lora
    signature TEXT NOT NULL,      -- JSON, see LlamaConfig.block_signature
    nbytes INTEGER NOT NULL,      -- tensor bytes (the unique-bytes bound counts these)
    file_bytes INTEGER NOT NULL,  -- bytes of the safetensors file on disk
    origin TEXT NOT NULL,         -- the source that first brought this block
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,         -- LlamaConfig JSON
    origin TEXT NOT NULL,         -- what `zoo add` was given
    tokenizer TEXT NOT NULL,      -- "dir:<hash>" under tokenizers/, or "byte"
    layers_per_block INTEGER NOT NULL,
    meta TEXT NOT NULL,           -- JSON: base model, task, scores, ...
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chains (
    model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    block TEXT NOT NULL REFERENCES blocks(id),
    adapter TEXT REFERENCES blocks(id),
    PRIMARY KEY (model, pos)
);
CREATE INDEX IF NOT EXISTS chains_block ON chains(block);
-- equivalence evidence: `model`'s entry at `pos` vs another model's entry, on `model`'s inputs
CREATE TABLE IF NOT EXISTS equivalence (
    model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    block TEXT NOT NULL,
    adapter TEXT NOT NULL,        -- '' for none
    cos_mean REAL NOT NULL, cos_min REAL NOT NULL,
    rel_l2_mean REAL NOT NULL, rel_l2_p95 REAL NOT NULL,
    n_tokens INTEGER NOT NULL,
    calib_hash TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (model, pos, block, adapter)
);
-- measured ways to serve a model: the exact chain, equivalence-assembled chains, stitched chains
CREATE TABLE IF NOT EXISTS chain_options (
    model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
    label TEXT NOT NULL,          -- exact | t=0.05 | stitch@15 ...
    chain TEXT NOT NULL,          -- JSON [[block, adapter or null], ...]
    score REAL NOT NULL,          -- task score (0..100) of this chain
    perplexity REAL NOT NULL,
    drop_points REAL NOT NULL,    -- exact score - this score
    saved_bytes INTEGER NOT NULL, -- resident bytes no longer needed for this model
    threshold REAL,               -- equivalence threshold that produced it, if any
    calib_hash TEXT NOT NULL,
    n_eval INTEGER NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (model, label)
);
CREATE TABLE IF NOT EXISTS budgets (
    model TEXT PRIMARY KEY REFERENCES models(name) ON DELETE CASCADE,
    points REAL NOT NULL          -- the largest task-score drop this model may be served with
);
"""


@dataclass(frozen=True)
class BlockRow:
    id: str
    kind: str
    signature: dict
    nbytes: int
    file_bytes: int
    origin: str


@dataclass(frozen=True)
class ModelRow:
    name: str
    config: str
    origin: str
    tokenizer: str
    layers_per_block: int
    meta: dict
    created: str


def connect(path: Path) -> sqlite3.Connection:
    # explicit BEGIN/COMMIT; the engine thread reads blocks too (serialized by the engine lock)
    con = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("PRAGMA journal_mode = DELETE")  # one file: the manifest is easy to copy/share
    con.execute("PRAGMA synchronous = FULL")
    con.executescript(SCHEMA)
    row = con.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is None:
        con.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) != SCHEMA_VERSION:
        raise RuntimeError(f"zoo schema {row[0]} is not {SCHEMA_VERSION}: make a new zoo")
    return con


def block_row(con: sqlite3.Connection, block_id: str) -> BlockRow | None:
    r = con.execute("SELECT id, kind, signature, nbytes, file_bytes, origin FROM blocks "
                    "WHERE id=?", (block_id,)).fetchone()
    return None if r is None else BlockRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5])


def all_blocks(con: sqlite3.Connection) -> list[BlockRow]:
    rows = con.execute("SELECT id, kind, signature, nbytes, file_bytes, origin FROM blocks "
                       "ORDER BY id").fetchall()
    return [BlockRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5]) for r in rows]


def model_row(con: sqlite3.Connection, name: str) -> ModelRow | None:
    r = con.execute("SELECT name, config, origin, tokenizer, layers_per_block, meta, created "
                    "FROM models WHERE name=?", (name,)).fetchone()
    return None if r is None else ModelRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6])


def model_names(con: sqlite3.Connection) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM models ORDER BY name")]


def chain_rows(con: sqlite3.Connection, name: str) -> list[tuple[str, str | None]]:
    return con.execute("SELECT block, adapter FROM chains WHERE model=? ORDER BY pos",
                       (name,)).fetchall()


def referenced_block_ids(con: sqlite3.Connection) -> set[str]:
    """Blocks some model's chain, or some measured chain option (e.g. a stitch), uses."""
    ids = {r[0] for r in con.execute("SELECT block FROM chains")}
    ids |= {r[0] for r in con.execute("SELECT adapter FROM chains WHERE adapter IS NOT NULL")}
    for (chain,) in con.execute("SELECT chain FROM chain_options"):
        for block, adapter in json.loads(chain):
            ids.add(block)
            if adapter:
                ids.add(adapter)
    return ids


def use_counts(con: sqlite3.Connection) -> dict[str, int]:
    """How many models' chains use each block (as a block or as an adapter)."""
    rows = con.execute(
        "SELECT id, COUNT(DISTINCT model) FROM (SELECT block AS id, model FROM chains "
        "UNION ALL SELECT adapter AS id, model FROM chains WHERE adapter IS NOT NULL) GROUP BY id")
    return {r[0]: r[1] for r in rows}
