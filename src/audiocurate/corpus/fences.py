"""Speaking-rate fences over whole recordings or groups (`filters.speaking_rate.scope`:
`recording` or `column`), as a corpus pass: every group's rate fences are taken over all of
its rows, wherever the stream wrote them (any block, any shard, curated or rejected).

Whose rates count: every row that was in play at the speaking-rate step, which is exactly the
rows with a `speech_cps` value (the filter measured it there; rows an earlier gate rejected
have none). That set does not change when this or another pass moves rows, so the decision is
the same on every run of the pass and a pass cut off is finished exactly by the next. Only
curated rows move; a row a later gate (WER, the judge) rejected keeps that reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import contract as C
from ..filters.speaking_rate import CPS_OUTLIER, SPEECH_CPS, group_column, tukey_fences
from ..run_state import CURATED, REJECTED
from ..sinks import OutputDir
from . import shards

_GROUP = "group"
_RATES = pa.schema([("path", pa.string()), ("id", pa.string()), (_GROUP, pa.string()), (SPEECH_CPS, pa.float64()),
                    ("curated", pa.bool_())])


def rate_rows(id_column: str, group: str, curated: bool):
    """A shard batch -> the pass's rows: those with a rate and a group, in one schema."""
    def rows(batch: pa.Table) -> pa.Table:
        batch = batch.filter(pc.and_(pc.is_valid(batch[SPEECH_CPS]), pc.is_valid(batch[group])))
        n = batch.num_rows
        return pa.table([pc.cast(batch["path"], pa.string()), pc.cast(batch[id_column], pa.string()),
                         pc.cast(batch[group], pa.string()), pc.cast(batch[SPEECH_CPS], pa.float64()),
                         pa.array(np.full(n, curated), pa.bool_())], schema=_RATES)

    return rows


def outliers(k: float, min_rows: int):
    def outside(group: pa.Table) -> pa.Table:
        """One group's rows: the curated ones outside the fences of all of the group's rates."""
        cps = group[SPEECH_CPS].to_numpy()
        if len(cps) < min_rows:
            return _moves(group.slice(0, 0))
        lo, hi = tukey_fences(cps, k)
        out = ~((lo <= cps) & (cps <= hi)) & group["curated"].to_numpy(zero_copy_only=False)
        return _moves(group.filter(pa.array(out, pa.bool_())))

    return outside


def _moves(rows: pa.Table) -> pa.Table:
    return pa.table({"path": rows["path"], "id": rows["id"],
                     C.DROP_REASON: pa.array([CPS_OUTLIER] * rows.num_rows, pa.string())})


def fences_pass(out: OutputDir, config: Any, id_column: str) -> int:
    """Move the curated rows whose rate lies outside their group's fences to `rejected/` as
    `chars_per_s_outlier`; how many moved."""
    rate = config.filters.speaking_rate
    group = group_column(rate)
    parts = []
    for split, curated in ((CURATED, True), (REJECTED, False)):
        files = [s for s in out.part_files(split) if SPEECH_CPS in shards.present_columns(out, [s], [SPEECH_CPS])]
        if not files:
            continue
        columns = shards.present_columns(out, files, [id_column, group, SPEECH_CPS])
        if group not in columns:
            raise ValueError(f"filters.speaking_rate: the rows of {out.uri}/{split} have no column {group!r}")
        parts.append(shards.read_shards(out, files, columns).map_batches(rate_rows(id_column, group, curated),
                                                                         batch_format="pyarrow"))
    if not parts:
        return 0
    rows = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    moves = rows.groupby(_GROUP, num_partitions=shards.partitions(0)).map_groups(
        outliers(rate.iqr_k, rate.min_segments), batch_format="pyarrow")
    return shards.apply_moves(out, id_column, moves.materialize())
