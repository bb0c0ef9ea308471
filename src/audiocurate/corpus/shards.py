"""What the corpus passes share: reading the stored shards' columns as a Dataset, and
applying moves to `rejected/` shard by shard through the compaction journal (`moves`)."""

from __future__ import annotations

from typing import Any, Optional

import pyarrow as pa

from ..sinks import OutputDir
from .moves import move_to_rejected


def read_shards(out: OutputDir, shards: list[str], columns: list[str]) -> Any:
    """The shards' `columns` (those present) as a Dataset, with each row's shard as `path`."""
    import ray

    from .dedup import sort_shuffled

    return sort_shuffled(ray.data.read_parquet(shards, filesystem=out.fs, columns=columns, include_paths=True))


def present_columns(out: OutputDir, shards: list[str], wanted: list[str]) -> list[str]:
    """The `wanted` columns that every one of `shards` has, in `wanted`'s order."""
    import pyarrow.parquet as pq

    have: Optional[set[str]] = None
    for shard in shards:
        with out.fs.open_input_file(shard) as f:
            names = set(pq.read_schema(f).names)
        have = names if have is None else have & names
    return list(dict.fromkeys(c for c in wanted if c in (have or set())))


def apply_moves(out: OutputDir, id_column: str, moves: Any) -> int:
    """Moves (path, id, drop_reason, ...) applied shard by shard, each in a Ray task."""
    def per_shard(group: pa.Table) -> pa.Table:
        shard = group["path"][0].as_py()
        moved = move_to_rejected(out, shard, id_column, group.drop_columns(["path"]))
        return pa.table({"moved": [moved]})

    # executed once: a second execution would find the shards moved already; a group is one shard's rows
    return sum(int(r["moved"]) for r in moves.groupby("path", num_partitions=partitions(0)).map_groups(per_shard, batch_format="pyarrow")
               .iter_rows())


def partitions(rows: int) -> int:
    """Hash-shuffle partitions: two per core, and one per 200,000 rows beyond that (a partition's
    rows are what one worker holds)."""
    import ray

    cores = int(ray.cluster_resources().get("CPU", 1))
    return max(2 * cores, rows // 200_000)
