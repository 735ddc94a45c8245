"""The block zoo on disk: each distinct block once, as safetensors, plus the SQLite manifest.

    ZOO/manifest.sqlite            models, chains, blocks (see manifest.py)
    ZOO/blocks/ab/abcdef....st     one file per distinct block, named by its id
    ZOO/tokenizers/<hash>/         saved tokenizers, shared by every model that uses one
    ZOO/staging/                   files of an add in progress (removed on the next open)
    ZOO/lock                       writers hold an exclusive flock

Crash safety: `add_model` writes new block files to staging, moves them into blocks/, then
commits one SQLite transaction. A crash before the commit leaves the manifest as it was; the
files it left are unreferenced, and the next writer removes them before doing anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from blockllm.models.config import LlamaConfig
from blockllm.zoo import manifest as mf
from blockllm.zoo.disk import (HEX64, CorruptBlock, ZooError, ZooStats, default_zoo_dir,
                               fault_point, fsync_dir, now_utc)
from blockllm.zoo.partition import Block, ChainEntry, block_id


class Zoo:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_zoo_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "blocks").mkdir(exist_ok=True)
        (self.root / "tokenizers").mkdir(exist_ok=True)
        self.con = mf.connect(self.root / "manifest.sqlite")

    def close(self) -> None:
        self.con.close()

    def block_path(self, bid: str) -> Path:
        if not HEX64.fullmatch(bid):  # ids come from the manifest: never a path outside the zoo
            raise CorruptBlock(f"block id {bid[:80]!r} is not a sha256 hex digest: the manifest "
                               f"at {self.root} was tampered with; rebuild the zoo")
        return self.root / "blocks" / bid[:2] / f"{bid}.safetensors"

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive writer section; first removes what an interrupted writer left behind."""
        with open(self.root / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._recover()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _recover(self) -> None:
        shutil.rmtree(self.root / "staging", ignore_errors=True)
        for path in self.orphan_files():
            path.unlink()

    def orphan_files(self) -> list[Path]:
        """Block files and tokenizer dirs that no manifest row references."""
        known = {r.id for r in mf.all_blocks(self.con)}
        out = [p for p in (self.root / "blocks").glob("*/*.safetensors") if p.stem not in known]
        toks = {r[0].removeprefix("dir:") for r in self.con.execute("SELECT tokenizer FROM models")}
        out += [p for p in (self.root / "tokenizers").iterdir() if p.name not in toks]
        return out

    # ---- writing -------------------------------------------------------------------------

    def add_model(self, name: str, config: LlamaConfig, blocks: list[Block],
                  chain: list[ChainEntry], origin: str, tokenizer=None,
                  layers_per_block: int = 1, meta: dict | None = None) -> list[str]:
        """Store a model; returns the ids of blocks that were new to the zoo."""
        if not name or "/" in name or name.startswith("."):
            raise ZooError(f"invalid model name {name!r}: use letters, digits, '-', '_' or '.'")
        with self.writing():
            if mf.model_row(self.con, name) is not None:
                raise ZooError(f"model {name!r} is already in the zoo: `blockllm zoo rm {name}` "
                               "first, or pick another --name")
            new, staging = self._publish(blocks)
            tok_ref = self._stage_tokenizer(tokenizer, staging)
            if tok_ref.startswith("dir:") and (staging / "tokenizer").exists():
                dest = self.root / "tokenizers" / tok_ref.removeprefix("dir:")
                if not dest.exists():
                    os.replace(staging / "tokenizer", dest)
            fault_point("published")
            now = now_utc()
            self.con.execute("BEGIN IMMEDIATE")
            try:
                self._insert_blocks(new, origin, now)
                self.con.execute("INSERT INTO models VALUES (?,?,?,?,?,?,?)", (
                    name, config.to_json(), origin, tok_ref, layers_per_block,
                    json.dumps(meta or {}, sort_keys=True), now))
                for pos, e in enumerate(chain):
                    self.con.execute("INSERT INTO chains VALUES (?,?,?,?)",
                                     (name, pos, e.block, e.adapter))
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return [b.id for b in new]

    def _publish(self, blocks: list[Block]) -> tuple[list[Block], Path]:
        """Write the blocks the zoo lacks to staging, fsync, and move them into blocks/.

        Until the caller commits rows for them they are unreferenced (removed on recovery)."""
        staging = self.root / "staging" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        new = [b for b in {b.id: b for b in blocks}.values()
               if mf.block_row(self.con, b.id) is None]
        staged = []
        for b in new:
            tmp = staging / f"{b.id}.safetensors"
            save_file({k: v.contiguous() for k, v in b.tensors.items()}, str(tmp),
                      metadata={"blockllm.id": b.id, "blockllm.kind": b.kind})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            staged.append((b, tmp))
        fault_point("staged")
        for b, tmp in staged:
            dest = self.block_path(b.id)
            dest.parent.mkdir(exist_ok=True)
            os.replace(tmp, dest)
            fault_point("publishing")
            fsync_dir(dest.parent)
        return new, staging

    def _insert_blocks(self, blocks: list[Block], origin: str, now: str) -> None:
        for b in blocks:
            self.con.execute("INSERT INTO blocks VALUES (?,?,?,?,?,?,?)", (
                b.id, b.kind, json.dumps(b.signature, sort_keys=True), b.nbytes,
                self.block_path(b.id).stat().st_size, origin, now))

    def add_chain_option(self, model: str, label: str, chain: list[ChainEntry],
                         blocks: list[Block], values: dict) -> None:
        """Record a measured way to serve `model` (replacing one with the same label), storing
        any new blocks it needs (e.g. a stitch) in the same transaction."""
        with self.writing():
            self.model(model)
            new, staging = self._publish(blocks)
            now = now_utc()
            self.con.execute("BEGIN IMMEDIATE")
            try:
                self._insert_blocks(new, f"option:{model}:{label}", now)
                self.con.execute(
                    "INSERT OR REPLACE INTO chain_options VALUES (?,?,?,?,?,?,?,?,?,?,?)", (
                        model, label, json.dumps([[e.block, e.adapter] for e in chain]),
                        values["score"], values["perplexity"], values["drop_points"],
                        values["saved_bytes"], values.get("threshold"), values["calib_hash"],
                        values["n_eval"], now))
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            shutil.rmtree(staging, ignore_errors=True)

    def _stage_tokenizer(self, tokenizer, staging: Path) -> str:
        from blockllm.loaders.tokenizer import ByteTokenizer
        if tokenizer is None or isinstance(tokenizer, ByteTokenizer):
            return "byte"
        out = staging / "tokenizer"
        tokenizer.save_pretrained(str(out))
        h = hashlib.sha256()
        for f in sorted(out.iterdir()):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        return "dir:" + h.hexdigest()[:32]

    def remove_model(self, name: str) -> None:
        with self.writing():
            if mf.model_row(self.con, name) is None:
                raise ZooError(f"no model {name!r} in the zoo (see `blockllm zoo ls`)")
            self.con.execute("BEGIN IMMEDIATE")
            self.con.execute("DELETE FROM chains WHERE model=?", (name,))
            self.con.execute("DELETE FROM models WHERE name=?", (name,))
            self.con.execute("COMMIT")

    def gc(self) -> tuple[int, int]:
        """Drop blocks no chain uses (rows first, then files). Returns (blocks, bytes) freed."""
        with self.writing():
            used = mf.referenced_block_ids(self.con)
            dead = [r for r in mf.all_blocks(self.con) if r.id not in used]
            self.con.execute("BEGIN IMMEDIATE")
            self.con.executemany("DELETE FROM blocks WHERE id=?", [(r.id,) for r in dead])
            self.con.execute("COMMIT")
            fault_point("gc")
            self._recover()  # the files of the rows just deleted are orphans now
            return len(dead), sum(r.file_bytes for r in dead)

    # ---- reading -------------------------------------------------------------------------

    def models(self) -> list[str]:
        return mf.model_names(self.con)

    def model(self, name: str) -> mf.ModelRow:
        row = mf.model_row(self.con, name)
        if row is None:
            known = ", ".join(self.models()) or "none"
            raise ZooError(f"no model {name!r} in the zoo at {self.root} (models: {known}); "
                           "add it with `blockllm zoo add SOURCE --name NAME`")
        return row

    def config(self, name: str) -> LlamaConfig:
        return LlamaConfig.from_json(self.model(name).config)

    def chain(self, name: str) -> list[ChainEntry]:
        self.model(name)
        return [ChainEntry(b, a) for b, a in mf.chain_rows(self.con, name)]

    def block_info(self, bid: str) -> mf.BlockRow:
        row = mf.block_row(self.con, bid)
        if row is None:
            raise ZooError(f"block {bid[:12]} is not in the manifest: the zoo is inconsistent, "
                           "run `blockllm zoo verify`")
        return row

    def load_block(self, bid: str, verify: bool = True) -> Block:
        """Read a block from disk; with `verify`, recompute its id and refuse a mismatch."""
        return self.read_block(self.block_info(bid), verify)

    def read_block(self, row: mf.BlockRow, verify: bool = True) -> Block:
        """`load_block` for a manifest row already in hand: touches files only, not the
        manifest, so any thread may call it (prefetching hosts do)."""
        bid = row.id
        path = self.block_path(bid)
        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError, ValueError) as e:
            raise CorruptBlock(f"block {bid[:12]} ({path}) cannot be read: {e}; re-add the "
                               "models that use it (`blockllm zoo verify` lists them)") from e
        if verify and block_id(row.signature, tensors) != bid:
            raise CorruptBlock(f"block {bid[:12]} ({path}) fails its hash check: the file is "
                               "corrupted; re-add the models that use it (`blockllm zoo verify`)")
        return Block(row.kind, row.signature, tensors, bid)

    def tokenizer(self, name: str):
        ref = self.model(name).tokenizer
        if ref == "byte":
            from blockllm.loaders.tokenizer import ByteTokenizer
            return ByteTokenizer(self.config(name))
        from transformers import AutoTokenizer
        if not (ref.startswith("dir:") and re.fullmatch(r"[0-9a-f]{16,64}", ref[4:])):
            raise ZooError(f"tokenizer reference {ref[:80]!r} is not a digest: the manifest at "
                           f"{self.root} was tampered with")
        return AutoTokenizer.from_pretrained(str(self.root / "tokenizers" / ref[4:]))

    def verify(self) -> list[str]:
        """Problems found (empty when every block's bytes match its id). Names the models hit."""
        problems = []
        for row in mf.all_blocks(self.con):
            try:
                self.load_block(row.id, verify=True)
            except CorruptBlock as e:
                users = [r[0] for r in self.con.execute(
                    "SELECT DISTINCT model FROM chains WHERE block=? OR adapter=?",
                    (row.id, row.id))]
                problems.append(f"{e} [used by: {', '.join(users) or 'no model'}]")
        problems += [f"unreferenced file {p} (removed by the next `zoo add`/`zoo gc`)"
                     for p in self.orphan_files()]
        return problems

    def stats(self) -> ZooStats:
        used = mf.referenced_block_ids(self.con)
        rows = {r.id: r for r in mf.all_blocks(self.con)}
        logical = 0
        for name in self.models():
            for e in self.chain(name):
                logical += rows[e.block].nbytes + (rows[e.adapter].nbytes if e.adapter else 0)
        disk = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()
                   and p.name != "lock")
        return ZooStats(models=len(self.models()), distinct_blocks=len(used),
                        unique_bytes=sum(rows[b].nbytes for b in used),
                        logical_bytes=logical, disk_bytes=disk)

    def chain_weights(self, name: str, verify: bool = True) -> list[tuple[Block, Block | None]]:
        """(block, adapter) pairs of a model's chain, loaded and verified, in chain order."""
        cache: dict[str, Block] = {}

        def get(bid: str) -> Block:
            if bid not in cache:
                cache[bid] = self.load_block(bid, verify)
            return cache[bid]
        return [(get(e.block), get(e.adapter) if e.adapter else None) for e in self.chain(name)]

