"""The corpus passes a run ends with, after its streaming pass and before compaction and the
report: speaking-rate fences over whole recordings or groups (`filters.speaking_rate.scope`),
then near-duplicates (`dedup`), then per-group caps (`corpus.max_hours_per`). Fences first: a
clip with a wrong transcript should not be the copy a duplicate group keeps.

Why a second pass over what was written, not a fingerprint pre-pass: the streaming pass stays
as it is (exact resume by shard), the fingerprint costs one cheap measurement while the samples
are decoded anyway, and the decision needs the quality signals (edu_score, DNSMOS) that exist
only once the models ran. Each pass reads stored columns only, in Ray, and moves rows through
the compaction journal (`moves.py`); it decides from the same inputs every time, so a pass cut
off by a crash is done again by the next run of the same command, exactly: rows it moved
already are inputs of the decision again (`rejected/` rows with its drop reason), and are not
moved twice.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from .. import contract as C
from ..run_state import CURATED, REJECTED
from ..sinks import OutputDir
from .dedup import SEP, group_duplicates, id_of, node_keys
from .fingerprint import FINGERPRINT
from . import shards
from .moves import DUPLICATE_OF

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"
OVER_CAP = "over_cap"


def corpus_passes_wanted(config: Any) -> bool:
    """Whether this configuration has a corpus pass to run after the streaming pass."""
    return bool(fences_wanted(config) or config.dedup.enabled or config.corpus.max_hours_per is not None)


def fences_wanted(config: Any) -> bool:
    rate = config.filters.speaking_rate
    return rate.enabled and (rate.scope == "column" or (rate.scope == "recording" and config.segment.enabled))


def run_corpus_passes(out: OutputDir, config: Any, id_column: str, echo: Callable[[str], None] = print) -> dict:
    """Every configured pass, in order; what each moved."""
    from ..filters.speaking_rate import CPS_OUTLIER
    from .fences import fences_pass

    done: dict[str, int] = {}
    if fences_wanted(config):
        done[CPS_OUTLIER] = fences_pass(out, config, id_column)
        echo(f"audiocurate: speaking-rate fences per {config.filters.speaking_rate.scope}: {done[CPS_OUTLIER]} "
             "curated rows outside their fences moved to rejected/")
    if config.dedup.enabled:
        done[DUPLICATE] = dedup_pass(out, config, id_column)
        echo(f"audiocurate: dedup: {done[DUPLICATE]} curated rows were copies of another and moved to rejected/")
    if config.corpus.max_hours_per is not None:
        done[OVER_CAP] = caps_pass(out, config, id_column)
        echo(f"audiocurate: caps: {done[OVER_CAP]} curated rows over {config.corpus.max_hours_per.hours} h per "
             f"{config.corpus.max_hours_per.column} moved to rejected/")
    return done


def _nodes(id_column: str, keep: list[str], reason: Optional[str]) -> Callable[[pa.Table], pa.Table]:
    def nodes(batch: pa.Table) -> pa.Table:
        if reason is not None:  # rows an earlier run of this pass moved: inputs of the same decision
            batch = batch.filter(pc.equal(batch[C.DROP_REASON], reason))
        keys = node_keys(batch, id_column, keep, location=batch["path"])
        cols = {"node": pa.array(keys, pa.string())}
        for c in batch.column_names:
            if c not in (C.DROP_REASON, "path"):
                cols[c] = batch[c]
        return pa.table(cols)

    return nodes


def dedup_pass(out: OutputDir, config: Any, id_column: str) -> int:
    """Group the curated rows (and those an earlier run of this pass moved) by fingerprint; every
    copy but each group's best is moved to `rejected/` as `duplicate`, `duplicate_of` its id."""
    curated = out.part_files(CURATED)
    if not curated:
        return 0
    keep = list(config.dedup.keep)
    columns = shards.present_columns(out, curated, [id_column, FINGERPRINT, *keep])
    if FINGERPRINT not in columns:
        raise ValueError(f"dedup: the curated rows of {out.uri} have no `{FINGERPRINT}` column (the run that "
                         "wrote them had `dedup.enabled: false`); run with dedup enabled from the start")
    nodes = shards.read_shards(out, curated, columns).map_batches(_nodes(id_column, keep, None), batch_format="pyarrow")
    moved_before = [s for s in out.part_files(REJECTED) if FINGERPRINT in shards.present_columns(out, [s], [FINGERPRINT])]
    if moved_before:
        prior = shards.read_shards(out, moved_before, [*shards.present_columns(out, moved_before, columns), C.DROP_REASON])
        nodes = nodes.union(prior.map_batches(_nodes(id_column, keep, DUPLICATE), batch_format="pyarrow"))
    nodes = nodes.select_columns(["node", FINGERPRINT]).materialize()
    roots = group_duplicates(nodes, config.dedup.min_similarity, config.dedup.max_bucket, shards.partitions(0),
                             rows=nodes.count())
    curated_set = set(curated)

    def to_moves(batch: pa.Table) -> pa.Table:
        path, ids, of = [], [], []
        for node, root in zip(batch["node"].to_pylist(), batch["root"].to_pylist()):
            where = node.split(SEP)[2]
            if where in curated_set:  # a copy moved already stays where it is
                path.append(where)
                ids.append(id_of(node))
                of.append(id_of(root))
        return pa.table({"path": pa.array(path, pa.string()), "id": pa.array(ids, pa.string()),
                         C.DROP_REASON: pa.array([DUPLICATE] * len(ids), pa.string()),
                         DUPLICATE_OF: pa.array(of, pa.string())})

    return shards.apply_moves(out, id_column, roots.map_batches(to_moves, batch_format="pyarrow"))


def caps_pass(out: OutputDir, config: Any, id_column: str) -> int:
    """Each group's curated rows, best first (`dedup.keep`'s order, then id), kept while the
    group's hours stay within the cap; the rest moved to `rejected/` as `over_cap`."""
    cap = config.corpus.max_hours_per
    curated = out.part_files(CURATED)
    if not curated:
        return 0
    keep = list(config.dedup.keep)
    columns = shards.present_columns(out, curated, [id_column, cap.column, "duration_s", *keep])
    if cap.column not in columns:
        raise ValueError(f"corpus.max_hours_per.column: the curated rows have no column {cap.column!r}")
    limit_s = cap.hours * 3600.0

    def over_cap(group: pa.Table) -> pa.Table:
        nodes = node_keys(group, id_column, keep, location=group["path"])
        order = sorted(range(group.num_rows), key=nodes.__getitem__)
        durations = group["duration_s"].to_pylist()
        total, path, ids = 0.0, [], []
        for i in order:
            total += durations[i] or 0.0
            if total > limit_s + 1e-9:
                path.append(nodes[i].split(SEP)[2])
                ids.append(id_of(nodes[i]))
        return pa.table({"path": pa.array(path, pa.string()), "id": pa.array(ids, pa.string()),
                         C.DROP_REASON: pa.array([OVER_CAP] * len(ids), pa.string())})

    moves = (shards.read_shards(out, curated, columns).groupby(cap.column, num_partitions=shards.partitions(0))
             .map_groups(over_cap, batch_format="pyarrow"))
    return shards.apply_moves(out, id_column, moves.materialize())
