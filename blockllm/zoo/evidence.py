"""Reading and writing equivalence evidence, measured chain options and accuracy budgets."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from blockllm.zoo.equivalence import Evidence, Metrics
from blockllm.zoo.partition import ChainEntry
from blockllm.zoo.store import Zoo, ZooError

DEFAULT_BUDGET = 1.0  # points of task score a model may lose to substitutions


@dataclass(frozen=True)
class ChainOption:
    label: str  # exact | t=0.05 | stitch@15
    chain: tuple[ChainEntry, ...]
    score: float
    perplexity: float
    drop_points: float  # exact score - score (negative: the option scored higher)
    saved_bytes: int
    threshold: float | None


def save_evidence(zoo: Zoo, rows: list[Evidence], calib_hash: str) -> None:
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with zoo.writing():
        zoo.con.execute("BEGIN IMMEDIATE")
        for e in rows:
            m = e.metrics
            zoo.con.execute(
                "INSERT OR REPLACE INTO equivalence VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (e.model, e.pos, e.candidate.block, e.candidate.adapter or "", m.cos_mean,
                 m.cos_min, m.rel_l2_mean, m.rel_l2_p95, m.n_tokens, calib_hash, now))
        zoo.con.execute("COMMIT")


def load_evidence(zoo: Zoo, model: str) -> list[Evidence]:
    rows = zoo.con.execute(
        "SELECT pos, block, adapter, cos_mean, cos_min, rel_l2_mean, rel_l2_p95, n_tokens "
        "FROM equivalence WHERE model=? ORDER BY pos, block, adapter", (model,)).fetchall()
    return [Evidence(model, r[0], ChainEntry(r[1], r[2] or None), Metrics(*r[3:])) for r in rows]


def load_options(zoo: Zoo, model: str) -> list[ChainOption]:
    rows = zoo.con.execute(
        "SELECT label, chain, score, perplexity, drop_points, saved_bytes, threshold "
        "FROM chain_options WHERE model=? ORDER BY threshold IS NULL, threshold, label",
        (model,)).fetchall()
    return [ChainOption(r[0], tuple(ChainEntry(b, a) for b, a in json.loads(r[1])), r[2], r[3],
                        r[4], r[5], r[6]) for r in rows]


def budget(zoo: Zoo, model: str) -> float:
    zoo.model(model)
    row = zoo.con.execute("SELECT points FROM budgets WHERE model=?", (model,)).fetchone()
    return DEFAULT_BUDGET if row is None else row[0]


def set_budget(zoo: Zoo, model: str, points: float) -> None:
    if points < 0:
        raise ZooError("an accuracy budget is a drop in points: use a number >= 0")
    with zoo.writing():
        zoo.model(model)
        zoo.con.execute("INSERT OR REPLACE INTO budgets VALUES (?, ?)", (model, points))
