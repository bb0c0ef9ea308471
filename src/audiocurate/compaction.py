"""`audiocurate compact OUTPUT`: merge an output's small shards into files of a target size.

A run writes small shards on purpose: each is committed on its own, so a crash costs at most one
shard's work. Training readers and object stores want few large files instead. Compaction
rewrites each output's shards into files of about `target_mb` (in name order, so a merged file
holds neighbouring shards), with the row-group counts of their footers summed: resume and the
report read a compacted output exactly as before.

Crash safety: before a merged file is written, a journal entry in `_state/compaction/` names it
and the shards it replaces; the shards are deleted only after the merged file is committed, then
the entry. A compaction (or a run) that finds an entry finishes it: merged file present, the
shards still listed are deleted; absent, the entry is dropped and the shards stay. A row is
therefore never in two files once either has run, and never in none.

Run it on an output no run is writing to.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from .config import RayConfig
from .exports.hf_features import HF_METADATA_KEY
from .run_state import FOOTER_KEY, SPLITS, STATE_DIR, read_progress
from .sinks import OutputDir

JOURNAL = f"{STATE_DIR}/compaction"


@dataclass
class CompactionResult:
    files_before: dict[str, int] = field(default_factory=dict)
    files_after: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    recovered: int = 0


def recover(out: OutputDir) -> int:
    """Finish or drop the compactions a killed process left in the journal; how many."""
    entries = _journal(out)
    for path in entries:
        entry = json.loads(out.read_bytes(path) or b"{}")
        targets = entry.get("targets") or ([entry["target"]] if entry.get("target") else [])
        if entry and all(out.exists(t) for t in targets):
            for shard in entry["sources"]:
                if out.exists(shard):
                    out.fs.delete_file(shard)
        elif entry.get("sources") and all(out.exists(s) for s in entry["sources"]):
            # a move of rows into several files (corpus passes, `corpus/moves.py`) cut off before all were
            # written: the sources are whole, so the files written so far go
            for t in targets:
                if out.exists(t):
                    out.fs.delete_file(t)
        out.fs.delete_file(path)
    return len(entries)


def compact(out: OutputDir, target_mb: float = 256.0, ray_config: Optional[RayConfig] = None) -> CompactionResult:
    """Merge each split's small shards into files of about `target_mb`; `ray_config`: what each merge
    task reserves (`ray.merge_task_cpus`) and its retries (`ray.task_max_retries`), else the defaults."""
    result = CompactionResult(recovered=recover(out))
    progress = read_progress(out, SPLITS)
    if progress.unpartitioned_shards and progress.shards:
        raise RuntimeError(f"{len(progress.unpartitioned_shards)} shards of this output carry no row-group counts "
                           "(an older audiocurate wrote them) beside shards that do: merging them would hide which "
                           "rows resume must redo. Run the output to completion with --restart first")
    target = int(target_mb * 2**20)
    for split in SPLITS:
        shards = out.part_files(split)
        result.files_before[split] = len(shards)
        result.rows[split] = sum(progress.rows[p] for p in shards)  # merging keeps every row
        sizes = {i.path: i.size for i in out.fs.get_file_info(shards)} if shards else {}
        bins: list[list[str]] = []
        filled = 0
        for shard in shards:
            if bins and filled + sizes[shard] <= target:
                bins[-1].append(shard)
                filled += sizes[shard]
            else:
                bins.append([shard])
                filled = sizes[shard]
        merges = [(split, group) for group in bins if len(group) > 1]
        _run_merges(out, merges, ray_config or RayConfig())
        result.files_after[split] = len(out.part_files(split))
    return result


def _run_merges(out: OutputDir, merges: list[tuple[str, list[str]]], rc: RayConfig) -> None:
    """Each merge in a Ray task when Ray is up (a run's end: the bins are independent, and the
    workers read and write the object store themselves), else here, one after another."""
    import ray

    if ray.is_initialized() and len(merges) > 1:
        remote = ray.remote(num_cpus=rc.merge_task_cpus, max_retries=rc.task_max_retries)(_merge)
        ray.get([remote.remote(out, split, group) for split, group in merges])
    else:
        for split, group in merges:
            _merge(out, split, group)


def _merge(out: OutputDir, split: str, shards: list[str]) -> None:
    """The shards, one row group at a time, into one file with row groups of about
    `_GROUP_BYTES`: what is held at once is about one row group, whatever the file's size."""
    footers, schemas, counts, hf_features = [], [], defaultdict(float), None
    for path in shards:
        with out.fs.open_input_file(path) as f:
            footers.append(pq.read_metadata(f))  # kept (a few KB a shard): read once, not again below
        schema = footers[-1].schema.to_arrow_schema()
        for key, n in json.loads((schema.metadata or {}).get(FOOTER_KEY, b"{}")).items():
            counts[key] += n
        hf_features = hf_features or (schema.metadata or {}).get(HF_METADATA_KEY)
        schemas.append(schema.remove_metadata())
    # a column all null in one shard is typed by the others (as `pa.concat_tables` would)
    schema = pa.unify_schemas(schemas, promote_options="default")
    meta = {HF_METADATA_KEY: hf_features} if hf_features else {}
    if counts:
        meta[FOOTER_KEY] = json.dumps(counts, separators=(",", ":")).encode()
    if meta:
        schema = schema.with_metadata(meta)
    digest = hashlib.sha1("\n".join(sorted(s.rsplit("/", 1)[-1] for s in shards)).encode()).hexdigest()[:24]
    target = out.path(split, f"part-c{digest}.parquet")
    entry = out.path(JOURNAL, f"{digest}.json")
    out.write_bytes(entry, json.dumps({"target": target, "sources": shards}).encode())
    with out.writing(target) as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        pending: list[pa.Table] = []
        held = 0
        for path, footer in zip(shards, footers):
            with out.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f, metadata=footer)
                for i in range(pf.num_row_groups):
                    pending.append(_conform(pf.read_row_group(i), schema))
                    held += pending[-1].nbytes
                    if held >= _GROUP_BYTES:
                        _write_group(writer, pending)
                        held = 0
        _write_group(writer, pending)
    for path in shards:
        out.fs.delete_file(path)
    out.fs.delete_file(entry)


def rewrite_without(out: OutputDir, split: str, shard: str, rows: "list[int]",
                    parts_of: "dict[str, tuple[str, float]] | None" = None) -> int:
    """Rewrite `shard` without the rows at positions `rows` (`verify --repair`,
    `--retry-errors`); how many rows went. `parts_of` maps a dropped row's id to (row-group
    key, weight) so the footer's counts lose what the row counted for, and resume reads it
    again. Crash-safe through the compaction journal: the new file replaces the old one whole."""
    import numpy as np
    import pyarrow.compute as pc

    if not rows:
        return 0
    with out.fs.open_input_file(shard) as f:
        table = pq.read_table(f)
    gone_np = np.zeros(table.num_rows, dtype=bool)
    gone_np[np.asarray(rows, dtype=np.int64)] = True
    gone = pa.array(gone_np)
    removed = int(gone_np.sum())
    ids = pc.cast(table.column(0), pa.string())
    meta = dict(table.schema.metadata or {})
    counts = json.loads(meta.get(FOOTER_KEY, b"{}"))
    for i in pc.filter(ids, gone).to_pylist():
        key, weight = (parts_of or {}).get(i, (None, 0.0))
        if key in counts:
            counts[key] -= weight
            if counts[key] <= 1e-6:
                del counts[key]
    kept = table.filter(pc.invert(gone))
    if not kept.num_rows:
        out.fs.delete_file(shard)
        return removed
    if FOOTER_KEY in meta:
        meta[FOOTER_KEY] = json.dumps(counts, separators=(",", ":")).encode()
    kept = kept.replace_schema_metadata(meta)
    digest = hashlib.sha1("\n".join(sorted(map(str, pc.cast(kept.column(0), pa.string()).to_pylist()))).encode())
    target = out.path(split, f"part-r{digest.hexdigest()[:24]}.parquet")
    entry = out.path(JOURNAL, f"r{digest.hexdigest()[:24]}.json")
    out.write_bytes(entry, json.dumps({"target": target, "sources": [shard]}).encode())
    with out.writing(target) as sink:
        pq.write_table(kept, sink, compression="zstd")
    out.fs.delete_file(shard)
    out.fs.delete_file(entry)
    return removed


# Row groups of about 64 MB: readers stream a large file without holding it whole.
_GROUP_BYTES = 64 << 20


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A shard's rows in the merged file's schema: its column order, a missing column as nulls."""
    return pa.Table.from_arrays([table[f.name].cast(f.type) if f.name in table.column_names
                                 else pa.nulls(table.num_rows, f.type) for f in schema], schema=schema)


def _write_group(writer: pq.ParquetWriter, pending: list[pa.Table]) -> None:
    if pending:
        group = pa.concat_tables(pending)
        writer.write_table(group, row_group_size=max(group.num_rows, 1))
        pending.clear()


def _journal(out: OutputDir) -> list[str]:
    import pyarrow.fs as pafs

    infos = out.fs.get_file_info(pafs.FileSelector(out.path(JOURNAL), allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json")
                  and not i.base_name.startswith(".tmp-"))  # a journal entry half-written by a killed process


def summary(result: CompactionResult) -> str:
    lines = [f"  {s:<9} {result.files_before[s]:>7,} files -> {result.files_after[s]:>6,} ({result.rows[s]:,} rows)"
             for s in SPLITS]
    if result.recovered:
        lines.append(f"  finished {result.recovered} compaction(s) a killed process had left")
    return "\n".join(lines)
