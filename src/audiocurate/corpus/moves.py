"""Moving curated rows to `rejected/` with a drop reason decided over the whole corpus.

A curated shard that loses rows is replaced whole, through the compaction journal: the entry
names the shard and the files that replace it (the rejected rows, the curated rest), is written
first, and is deleted last. `compaction.recover` finishes a move whose files are all written
(deletes the shard) and undoes one that is not (deletes what was written), so a pass killed at
any point leaves every row in exactly one file, and running the pass again redoes only what is
left. The shard's row-group counts (resume's record) stay with the curated rest, or go with the
rejected rows when nothing is left: each input row group keeps its total.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import contract as C
from ..exports.hf_features import HF_METADATA_KEY
from ..run_state import CURATED, FOOTER_KEY, REJECTED
from ..sinks import OutputDir

DUPLICATE_OF = "duplicate_of"


def move_to_rejected(out: OutputDir, shard: str, id_column: str, moves: pa.Table) -> int:
    """Move the rows of curated `shard` whose ids are in `moves` (columns `id`, `drop_reason`,
    and any extra columns such as `duplicate_of`) to `rejected/`; how many moved."""
    if not out.exists(shard):  # moved by an earlier pass that finished this shard
        return 0
    with out.fs.open_input_file(shard) as f:
        table = pq.read_table(f)
    ids = pc.cast(table[id_column], pa.string())
    wanted = pc.cast(moves["id"], pa.string())
    mask = pc.is_in(ids, value_set=wanted)
    moved = table.filter(mask)
    if not moved.num_rows:
        return 0
    rest = table.filter(pc.invert(mask))
    meta = dict(table.schema.metadata or {})
    counts = meta.get(FOOTER_KEY)
    empty = json.dumps({}).encode()

    order = pc.index_in(pc.cast(moved[id_column], pa.string()), value_set=wanted)
    rejected = moved.drop_columns([c for c in (C.AUDIO, C.DROP_REASON, *moves.column_names) if c in moved.column_names
                                   and c != id_column])
    extra = {c: moves[c].take(order) for c in moves.column_names if c not in ("id",)}
    names = rejected.column_names
    columns = [rejected[id_column], extra.pop(C.DROP_REASON)] + [rejected[c] for c in names if c != id_column]
    rejected = pa.Table.from_arrays(columns + list(extra.values()),
                                    names=[id_column, C.DROP_REASON] + [c for c in names if c != id_column] + list(extra))
    rejected_meta = {k: v for k, v in meta.items() if k != HF_METADATA_KEY}
    if counts is not None:
        rejected_meta[FOOTER_KEY] = empty if rest.num_rows else counts
    rejected = rejected.replace_schema_metadata(rejected_meta)

    targets = [(out.path(REJECTED, f"part-m{_digest(rejected[id_column])}.parquet"), rejected)]
    if rest.num_rows:
        targets.append((out.path(CURATED, f"part-k{_digest(rest[id_column])}.parquet"), rest))
    from ..compaction import JOURNAL

    entry = out.path(JOURNAL, f"m{_digest(ids)}.json")
    out.write_bytes(entry, json.dumps({"targets": [t for t, _ in targets], "sources": [shard]}).encode())
    for path, part in targets:
        with out.writing(path) as sink:
            pq.write_table(part, sink, compression="zstd")
    out.fs.delete_file(shard)
    out.fs.delete_file(entry)
    return moved.num_rows


def _digest(ids: Any) -> str:
    return hashlib.sha1("\n".join(sorted(map(str, pc.cast(ids, pa.string()).to_pylist()))).encode()).hexdigest()[:24]
