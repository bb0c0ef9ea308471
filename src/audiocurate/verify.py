"""`audiocurate verify OUTPUT [--repair]`: is OUTPUT exact against its input, and the repairs
that keep it so.

Exact means: every shard reads; every input row in scope is accounted for once (in `errors/`,
or as the recording of rows in `curated/` and `rejected/`, all of its segments present); no
row id appears twice; nothing is there that the input does not hold. Ids are compared as
64-bit hashes (8 bytes a row in memory, as the report's duplicate check); the ids named in
the findings are read back from the files.

Repairs rewrite shards through the compaction journal (`compaction.rewrite_without`), so a
killed repair leaves every row in exactly one file:
* `remove_duplicates`: a row id found more than once keeps its first copy (curated, then
  rejected, then errors; shards in name order) — what an older version could leave when two
  runs wrote one OUTPUT at once;
* `reopen_errors` (`run --retry-errors`): error rows of retryable stages are removed, with
  their row groups' counts, so the next run reads and processes those rows again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import contract as C
from .compaction import recover, rewrite_without
from .run_state import CURATED, ERRORS, FOOTER_KEY, REJECTED, SPLITS, RunState
from .sinks import OutputDir


def retryable_error_stages() -> frozenset[str]:
    """The `error_stage` values whose error rows are worth another try (`Stage.retryable_errors`):
    a `--retry-errors` run takes the rows of `errors/` whose `error_stage` is one of these
    (a model or server that refused them) and leaves the others (corrupt audio) where they are.
    Here, above every stage's module, so that none of them imports another to list them."""
    from .judge.processors import ProcessorJudgeResultStage
    from .segment.stage import SegmentStage
    from .stages import DecodeStage, JudgeStage, PackageStage, SelectStage, TranscribeStage

    stages = (DecodeStage, SegmentStage, TranscribeStage, JudgeStage, ProcessorJudgeResultStage, SelectStage,
              PackageStage)
    return frozenset(s.name for s in stages if getattr(s, "retryable_errors", False))


_EXAMPLES = 5


def _hashes(ids: list[Optional[str]]) -> np.ndarray:
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64, count=len(ids))


@dataclass
class Verdict:
    input_rows: int = 0
    rows: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    unreadable: list[str] = field(default_factory=list)
    duplicates: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    unexpected: int = 0
    unexpected_examples: list[str] = field(default_factory=list)
    incomplete_recordings: int = 0
    marked_complete: bool = False

    @property
    def ok(self) -> bool:
        return not (self.unreadable or self.duplicates or self.missing or self.unexpected
                    or self.incomplete_recordings)

    def lines(self) -> list[str]:
        out = [f"  input rows       {self.input_rows:,}",
               f"  rows             {self.rows[CURATED]:,} curated, {self.rows[REJECTED]:,} rejected, "
               f"{self.rows[ERRORS]:,} errors"]
        if self.unreadable:
            out.append(f"  unreadable       {len(self.unreadable)} shards: {', '.join(self.unreadable[:_EXAMPLES])}")
        if self.duplicates:
            out.append(f"  duplicated ids   {self.duplicates:,} rows, e.g. {self.duplicate_examples}")
        if self.missing:
            out.append(f"  missing          {self.missing:,} input rows, e.g. {self.missing_examples}")
        if self.unexpected:
            out.append(f"  not in input     {self.unexpected:,} ids, e.g. {self.unexpected_examples}")
        if self.incomplete_recordings:
            out.append(f"  incomplete       {self.incomplete_recordings:,} recordings lack some segments")
        state = "exact" if self.ok else "NOT exact"
        mark = "marked complete (_SUCCESS)" if self.marked_complete else "not marked complete"
        out.append(f"  verdict          {state}, {mark}")
        return out


def _shards(out: OutputDir) -> Iterator[tuple[str, str]]:
    for split in SPLITS:
        for path in out.part_files(split):
            yield split, path


def _read_ids(out: OutputDir, path: str, id_column: str) -> pa.Table:
    with out.fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        cols = [c for c in (id_column, "parent_id", "segments", C.ERROR_STAGE) if c in names]
        return pf.read(columns=cols)


def _keys(t: pa.Table, id_column: str) -> tuple[list[str], list[str]]:
    """(row ids, the input row each stands for: its recording, or itself)."""
    ids = pc.cast(t[id_column], pa.string()).to_pylist()
    if "parent_id" not in t.column_names:
        return ids, ids
    parents = pc.cast(t["parent_id"], pa.string()).to_pylist()
    return ids, [p if p is not None else i for p, i in zip(parents, ids)]


def scope_ids(source: Any, limit: Optional[int]) -> Iterator[list[str]]:
    """The input's ids in scope, in chunks (`--limit`: the first N)."""
    if limit is not None:
        yield source.first_ids(limit)[0]
        return
    if getattr(source, "partitioned", False):  # a row group at a time
        from .resume import _group_ids, partitions

        for p in partitions(source):
            yield _group_ids(source, p)
        return
    yield source.first_ids(source.count())[0]


def verify(out: OutputDir, source: Any, id_column: str, limit: Optional[int]) -> Verdict:
    v = Verdict(marked_complete=RunState(out).is_complete())
    row_h, key_h, seg_key_h, seg_n = [], [], [], []
    for split, path in _shards(out):
        try:
            t = _read_ids(out, path, id_column)
        except (OSError, pa.ArrowException) as e:
            v.unreadable.append(f"{path} ({e})")
            continue
        v.rows[split] += t.num_rows
        ids, keys = _keys(t, id_column)
        row_h.append(_hashes(ids))
        key_h.append(_hashes(keys))
        if "segments" in t.column_names and "parent_id" in t.column_names:
            has_parent = pc.is_valid(t["parent_id"]).to_numpy(zero_copy_only=False)
            seg_key_h.append(key_h[-1][has_parent])
            seg_n.append(np.asarray(t["segments"].fill_null(1).to_numpy(zero_copy_only=False))[has_parent])
    rows = np.concatenate(row_h) if row_h else np.zeros(0, np.uint64)
    uniq, counts = np.unique(rows, return_counts=True)
    dup_h = uniq[counts > 1]
    v.duplicates = int(counts[counts > 1].sum() - len(dup_h))
    keys = np.unique(np.concatenate(key_h)) if key_h else np.zeros(0, np.uint64)
    in_scope: list[np.ndarray] = []
    for chunk in scope_ids(source, limit):
        v.input_rows += len(chunk)
        h = _hashes(chunk)
        in_scope.append(h)
        missing = ~np.isin(h, keys)
        v.missing += int(missing.sum())
        v.missing_examples.extend(np.asarray(chunk, dtype=object)[missing][: _EXAMPLES - len(v.missing_examples)])
    scope = np.unique(np.concatenate(in_scope)) if in_scope else np.zeros(0, np.uint64)
    extra_h = keys[~np.isin(keys, scope)]
    v.unexpected = len(extra_h)
    if seg_key_h:
        sk, sn = np.concatenate(seg_key_h), np.concatenate(seg_n)
        parents, present = np.unique(sk, return_counts=True)
        expected = np.zeros(len(parents), np.int64)
        np.maximum.at(expected, np.searchsorted(parents, sk), sn.astype(np.int64))
        # a parent whose recording also failed whole is in errors/ under its own id; not counted here
        v.incomplete_recordings = int((present < expected).sum())
    if len(dup_h) or len(extra_h):
        _name_examples(out, id_column, v, dup_h, extra_h)
    return v


def _name_examples(out: OutputDir, id_column: str, v: Verdict, dup_h: np.ndarray, extra_h: np.ndarray) -> None:
    for _, path in _shards(out):
        if len(v.duplicate_examples) >= _EXAMPLES and len(v.unexpected_examples) >= min(v.unexpected, _EXAMPLES):
            return
        try:
            ids, keys = _keys(_read_ids(out, path, id_column), id_column)
        except (OSError, pa.ArrowException):
            continue
        for i, h in zip(ids, _hashes(ids)):
            if h in dup_h and i not in v.duplicate_examples and len(v.duplicate_examples) < _EXAMPLES:
                v.duplicate_examples.append(i)
        for k, h in zip(keys, _hashes(keys)):
            if h in extra_h and k not in v.unexpected_examples and len(v.unexpected_examples) < _EXAMPLES:
                v.unexpected_examples.append(k)


def _row_groups(source: Any) -> list:
    """The input's row groups (none for a source resumed by id): read once per repair."""
    from .resume import partitions

    return partitions(source) if getattr(source, "partitioned", False) else []


def _parts_of(out: OutputDir, source: Any, groups: list, path: str, drop: list[str], weights: dict[str, float]
              ) -> dict[str, tuple[str, float]]:
    """For rows to drop from `path`: the input row group (of `groups`) each counted for, and how much."""
    if not groups or not drop:
        return {}
    from .resume import _group_ids
    import json

    with out.fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    keys = set(json.loads(meta.get(FOOTER_KEY, b"{}")))
    wanted = {d: weights.get(d, 1.0) for d in drop}
    parent = {d: d.rsplit("@", 1)[0] for d in drop}
    found: dict[str, tuple[str, float]] = {}
    for p in groups:
        if p.key not in keys:
            continue
        group = set(_group_ids(source, p))
        for d, w in wanted.items():
            if d in group or parent[d] in group:
                found.setdefault(d, (p.key, w))
    return found


def _weights(t: pa.Table, id_column: str) -> dict[str, float]:
    if "segments" not in t.column_names or "parent_id" not in t.column_names:
        return {}
    ids = pc.cast(t[id_column], pa.string()).to_pylist()
    return {i: 1.0 / max(n or 1, 1) for i, p, n in zip(ids, t["parent_id"].to_pylist(), t["segments"].to_pylist())
            if p is not None}


def remove_duplicates(out: OutputDir, source: Any, id_column: str) -> int:
    """Keep each row id's first copy; the rows removed."""
    recover(out)
    seen: set[str] = set()
    first_pass: list[tuple[str, str, pa.Table]] = []
    all_h = []
    for split, path in _shards(out):
        try:
            t = _read_ids(out, path, id_column)
        except (OSError, pa.ArrowException):  # `verify` names it; a repair leaves it as it is
            continue
        all_h.append(_hashes(_keys(t, id_column)[0]))
        first_pass.append((split, path, t))
    if not all_h:
        return 0
    uniq, counts = np.unique(np.concatenate(all_h), return_counts=True)
    dup = set(uniq[counts > 1].tolist())
    if dup:
        RunState(out).unmark_complete()  # first: a repair cut short leaves no _SUCCESS on an inexact output
    removed = 0
    groups = _row_groups(source) if dup else []
    for (split, path, t), h in zip(first_pass, all_h):
        ids = _keys(t, id_column)[0]
        drop: list[int] = []
        for n, x in enumerate(h.tolist()):
            if x in dup:  # by hash, then by the id itself: two ids that share a hash both stay
                if ids[n] in seen:
                    drop.append(n)
                else:
                    seen.add(ids[n])
        if drop:
            dropped = [ids[n] for n in drop]
            removed += rewrite_without(out, split, path, drop,
                                       _parts_of(out, source, groups, path, dropped, _weights(t, id_column)))
    return removed


def reopen_errors(out: OutputDir, source: Any, id_column: str, stages: Optional[tuple[str, ...]] = None) -> int:
    """Remove the error rows of `stages` (the retryable ones) so that the next run processes them again."""
    stages = stages or tuple(sorted(retryable_error_stages()))
    recover(out)
    RunState(out).unmark_complete()  # first: a reopening cut short leaves no _SUCCESS on an output missing rows
    reopened = 0
    groups = _row_groups(source)
    for path in out.part_files(ERRORS):
        t = _read_ids(out, path, id_column)
        if C.ERROR_STAGE not in t.column_names:
            continue
        hit = pc.is_in(t[C.ERROR_STAGE], value_set=pa.array(list(stages), pa.string()))
        rows = np.flatnonzero(hit.to_numpy(zero_copy_only=False)).tolist()
        if rows:
            ids = pc.cast(t[id_column], pa.string()).to_pylist()
            dropped = [ids[n] for n in rows]
            reopened += rewrite_without(out, ERRORS, path, rows,
                                        _parts_of(out, source, groups, path, dropped, _weights(t, id_column)))
    return reopened
