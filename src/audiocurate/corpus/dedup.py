"""Near-duplicate groups over the whole corpus, in Ray Data, with no per-row state in the driver.

    rows (node, fingerprint)
      -> one row per band key (32 per clip)             map_batches
      -> candidate pairs of each band bucket            hash partitions by band
      -> unique pairs, both fingerprints attached       groupby(a, b), then two joins by node's partition
      -> verified edges: similarity >= min_similarity   map_batches
      -> connected components (large-star/small-star)   hash partitions by u, per round, until no edge changes
      -> (node, root) for every node that is not its component's root

A node is a string that sorts best-first: the keep rule's rank (fixed width) then the row's id,
so a component's minimum is the copy that stays and the star algorithm's root is that copy.
Every step is one shuffle on a hash partition number, and its function handles a whole
partition with Arrow and numpy: a Python call per band bucket and per node took 297 s for
100,000 synthetic clips, by partition 13-21 s (`benchmarks/dedup_scale.py`, 2 shared cores).
The partitions grow with the corpus (`partitions_for`) and each shuffle has exactly that many
reduce tasks (`by_partition`), so a worker holds one partition of about the same size whatever the
corpus; `dedup.max_bucket` bounds a bucket's pairs.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .fingerprint import _EMPTY, BANDS, _mix64, band_keys, band_keys_matrix, similarity

SEP = "\x00"  # below every printable character: "a<SEP>" sorts before "ab<SEP>"
_RANK_DIGITS = 12


def node_keys(table: pa.Table, id_column: str, keep: Iterable[str], location: Optional[pa.Array] = None) -> list[str]:
    """Each row's node: `rank SEP id [SEP location]`; a smaller node is the better copy."""
    ids = pc.cast(table[id_column], pa.string()).to_pylist()
    columns = [c for c in keep if c in table.column_names]
    values = [pc.cast(table[c], pa.float64()).to_pylist() for c in columns]
    where = location.to_pylist() if location is not None else None
    out = []
    for i, row_id in enumerate(ids):
        rank = "".join(_descending(v[i]) for v in values)
        out.append(f"{rank}{SEP}{row_id}" + (f"{SEP}{where[i]}" if where is not None else ""))
    return out


def _descending(x: Optional[float]) -> str:
    """A fixed-width string that sorts higher values first, null last."""
    if x is None or not math.isfinite(x):
        return "9" * _RANK_DIGITS
    scaled = int(round(x * 1000))
    return f"{5 * 10 ** (_RANK_DIGITS - 1) - max(min(scaled, 5 * 10 ** (_RANK_DIGITS - 1) - 1), -4 * 10 ** (_RANK_DIGITS - 1)):0{_RANK_DIGITS}d}"


def id_of(node: str) -> str:
    return node.split(SEP)[1]


# ---- partitions: every step is a hash shuffle on a partition number, a worker holds one partition ----

TARGET_PARTITION_BYTES = 16 * 2**20  # what one worker holds of one shuffle step, about
PART = "part"


def partitions_for(rows: int, row_bytes: int, minimum: int) -> int:
    """Partitions of a shuffle of `rows` rows of about `row_bytes` each: at least `minimum` (two
    per core), more as the corpus grows, so that a worker's partition stays about the same size."""
    return max(minimum, -(-rows * row_bytes // TARGET_PARTITION_BYTES))


def hash_strings(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each string (null as empty), the same in every process (Python's own
    `hash` is salted per process): a position-weighted sum of the bytes, then mixed."""
    arr = pc.cast(values, pa.large_string())
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset: arr.offset + n + 1]
    lengths = np.diff(offsets)
    data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]: offsets[-1]] if n and arr.buffers()[2] else \
        np.zeros(0, np.uint8)
    starts = offsets[:-1] - offsets[0]
    position = np.arange(len(data)) - np.repeat(starts, lengths)
    with np.errstate(over="ignore"):
        weighted = data.astype(np.uint64) * _mix64(position.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    sums = np.zeros(n, np.uint64)
    some = lengths > 0
    if some.any():
        sums[some] = np.add.reduceat(weighted, starts[some])
    if arr.null_count:
        valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        sums, lengths = np.where(valid, sums, 0).astype(np.uint64), np.where(valid, lengths, 0)
    return _mix64(sums ^ lengths.astype(np.uint64))


def with_partition(column: str, partitions: int):
    """Rows -> the same rows with `part`: their `column`'s hash modulo `partitions`."""
    def add(batch: pa.Table) -> pa.Table:
        values = batch[column]
        if pa.types.is_integer(values.type):
            h = _mix64(values.to_numpy().astype(np.int64).view(np.uint64))
        else:
            h = hash_strings(values)
        return batch.append_column(PART, pa.array((h % np.uint64(partitions)).astype(np.int64), pa.int64()))

    return add


def by_partition(ds: "Any", column: str, partitions: int, fn: Any) -> "Any":
    """`fn` on each hash partition of `ds` by `column` (all rows with one value in one call): a
    call per partition, not per value, so a million singleton keys cost a few hundred calls.

    The shuffle is a sort on the partition number with one boundary per partition, so it has
    exactly `partitions` reduce tasks, each holding one partition. `groupby(..,
    num_partitions=..).map_groups` under the sort shuffle ignores `num_partitions` and runs one
    reduce task per input block, so a reduce task's share followed the input's blocking, not the
    partitions asked for."""
    shuffled = ds.map_batches(with_partition(column, partitions), batch_format="pyarrow")
    shuffled = (shuffled.sort(PART, boundaries=list(range(1, partitions))) if partitions > 1
                else shuffled.repartition(1))
    return shuffled.map_batches(_each_partition(fn), batch_size=None, batch_format="pyarrow")


def _each_partition(fn: Any):
    def each(block: pa.Table) -> Iterable[pa.Table]:
        """`fn` on each partition of a block: one after the sort, but a block is not bound to it."""
        if not block.num_rows:
            return
        part = block[PART].to_numpy()
        order = np.argsort(part, kind="stable")
        if (np.diff(order) != 1).any():
            block, part = block.take(pa.array(order)), part[order]
        starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(part)]):
            yield fn(block.slice(int(start), int(end - start)))

    return each


# ---- the Ray Data steps (each a plain function over Arrow, tested without Ray) ------------------------

def fingerprint_matrix(fps: Any) -> Optional[np.ndarray]:
    """Fingerprints (no nulls) as an (n, PERMUTATIONS) uint32 matrix; None when their lengths differ."""
    values = fps.to_pylist() if hasattr(fps, "to_pylist") else list(fps)
    if not values:
        return np.zeros((0, 0), np.uint32)
    width = len(values[0])
    if any(len(v) != width for v in values):
        return None
    return np.frombuffer(b"".join(values), "<u4").reshape(len(values), width // 4)


def explode_bands(batch: pa.Table) -> pa.Table:
    """(node, fingerprint) -> (band, node): a row per band key of each fingerprint."""
    batch = batch.filter(pc.is_valid(batch["fingerprint"]))
    matrix = fingerprint_matrix(batch["fingerprint"])
    if matrix is None:  # fingerprints of another width: one at a time
        keys = [band_keys(fp) for fp in batch["fingerprint"].to_pylist()]
        rows = np.repeat(np.arange(batch.num_rows), [len(k) for k in keys])
        band = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    elif not batch.num_rows:
        rows, band = np.zeros(0, np.int64), np.zeros(0, np.int64)
    else:  # band_keys() of every row at once; an empty set has no band
        rows = np.repeat(np.flatnonzero(matrix[:, 0] != _EMPTY), BANDS)
        band = band_keys_matrix(matrix).ravel()
    return pa.table({"band": pa.array(band, pa.int64()), "node": batch["node"].take(pa.array(rows, pa.int64()))})


def bucket_pairs(max_bucket: int):
    def pairs(group: pa.Table) -> pa.Table:
        """The candidate pairs (a < b) of each band bucket in `group` (one bucket when it has no
        `band` column): every pair, or in a bucket larger than `max_bucket`, each node with the
        bucket's best."""
        if "band" not in group.column_names:
            group = group.append_column("band", pa.array(np.zeros(group.num_rows, np.int64)))
        t = group.select(["band", "node"]).group_by(["band", "node"]).aggregate([])
        t = t.sort_by([("band", "ascending"), ("node", "ascending")])
        band = t["band"].to_numpy()
        starts = np.flatnonzero(np.r_[True, band[1:] != band[:-1]]) if len(band) else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, len(band)])
        a: list[str] = []
        b: list[str] = []
        for start, size in zip(starts[sizes >= 2], sizes[sizes >= 2]):
            nodes = t["node"].slice(int(start), int(size)).to_pylist()
            if size > max_bucket:
                a += [nodes[0]] * (len(nodes) - 1)
                b += nodes[1:]
            else:
                for x, y in itertools.combinations(nodes, 2):
                    a.append(x)
                    b.append(y)
        return _pairs_table(a, b)

    return pairs


def _pairs_table(a: list[str], b: list[str]) -> pa.Table:
    return pa.table({"a": pa.array(a, pa.string()), "b": pa.array(b, pa.string())})


def verified(min_similarity: float):
    def verify(batch: pa.Table) -> pa.Table:
        """The pairs whose fingerprints agree: the corpus's duplicate edges."""
        x, y = fingerprint_matrix(batch["fp_a"]), fingerprint_matrix(batch["fp_b"])
        if x is None or y is None or x.shape != y.shape:
            keep = np.array([similarity(p, q) >= min_similarity
                             for p, q in zip(batch["fp_a"].to_pylist(), batch["fp_b"].to_pylist())], bool)
        elif not len(x):
            keep = np.zeros(0, bool)
        else:  # similarity() for every pair at once
            agree = (x == y).mean(axis=1)
            agree[(x[:, 0] == _EMPTY) | (y[:, 0] == _EMPTY)] = 0.0
            keep = agree >= min_similarity
        return batch.select(["a", "b"]).filter(pa.array(keep, pa.bool_()))

    return verify


def _distinct(group: pa.Table) -> pa.Table:
    return group.select(["u", "v"]).group_by(["u", "v"]).aggregate([])


def _with_min(edges: pa.Table) -> pa.Table:
    """`edges` with `v_min`: the smallest `v` of each `u`."""
    return edges.join(edges.group_by("u").aggregate([("v", "min")]), "u", join_type="inner")


def large_star(group: pa.Table) -> pa.Table:
    """Nodes u and their neighbours: every neighbour larger than u is joined to the smallest of
    u's closed neighbourhood."""
    t = _with_min(_distinct(group))
    m = pc.min_element_wise(t["u"], t["v_min"])
    bigger = pc.greater(t["v"], t["u"])
    return _edges(t["v"].filter(bigger), m.filter(bigger))


def small_star(group: pa.Table) -> pa.Table:
    """Nodes u and their neighbours: u and its smaller neighbours are joined to the smallest of them."""
    t = _distinct(group)
    selves = t.select(["u"]).group_by("u").aggregate([])
    closed = pa.concat_tables([t.filter(pc.less_equal(t["v"], t["u"])), pa.table({"u": selves["u"], "v": selves["u"]})])
    t = _with_min(_distinct(closed))
    rest = pc.not_equal(t["v"], t["v_min"])
    return _edges(t["v"].filter(rest), t["v_min"].filter(rest))


def _edges(u: Any, v: Any) -> pa.Table:
    return pa.table({"u": pa.array(u, pa.string()) if isinstance(u, list) else pc.cast(u, pa.string()),
                     "v": pa.array(v, pa.string()) if isinstance(v, list) else pc.cast(v, pa.string())})


def both_directions(batch: pa.Table) -> pa.Table:
    edges = batch.select(["u", "v"])
    both = pa.concat_tables([edges, pa.table({"u": edges["v"], "v": edges["u"]})])
    return both.filter(pc.not_equal(both["u"], both["v"]))


def _edge_digest(batch: pa.Table) -> pa.Table:
    """A per-edge 63-bit hash, summed to tell whether a round changed the edge set."""
    lo, hi = pc.min_element_wise(batch["u"], batch["v"]), pc.max_element_wise(batch["u"], batch["v"])
    h = _mix64(hash_strings(lo) ^ (hash_strings(hi) * np.uint64(0x9E3779B97F4A7C15))) >> np.uint64(8)
    return pa.table({"h": pa.array(h.astype(np.int64), pa.int64())})


# ---- the pass --------------------------------------------------------------------------------------

# About what a row of each step takes in a worker: a band row (key, node), a fingerprint row.
_BAND_ROW_BYTES, _PRINT_ROW_BYTES = 64, 480


def duplicate_edges(nodes: "Any", min_similarity: float, max_bucket: int, partitions: int,
                    rows: Optional[int] = None) -> "Any":
    """Verified duplicate pairs (a, b) of a Dataset of (node, fingerprint), as a lazy Dataset."""
    nodes = sort_shuffled(nodes)
    rows = nodes.count() if rows is None else rows
    bands = nodes.map_batches(explode_bands, batch_format="pyarrow")
    candidates = (by_partition(bands, "band", partitions_for(rows * BANDS, _BAND_ROW_BYTES, partitions),
                               bucket_pairs(max_bucket))
                  .groupby(["a", "b"], num_partitions=partitions).count().select_columns(["a", "b"]))
    fps = nodes.select_columns(["node", "fingerprint"]).map_batches(_fingerprint_rows, batch_format="pyarrow")
    joins = partitions_for(rows, _PRINT_ROW_BYTES, partitions)
    with_a = _attach(candidates.map_batches(_pair_rows("a"), batch_format="pyarrow"), fps, "a", joins)
    with_b = _attach(with_a.map_batches(_pair_rows("b"), batch_format="pyarrow"), fps, "b", joins)
    return with_b.map_batches(verified(min_similarity), batch_format="pyarrow")


# A join by hash partition (Ray Data's own join needs polars): pairs and fingerprints in one
# schema, keyed by a node; each partition's pairs are joined to its fingerprints by Arrow.
_JOINED = pa.schema([("key", pa.string()), ("a", pa.string()), ("b", pa.string()), ("fp_a", pa.binary()),
                     ("fp", pa.binary())])


def _fingerprint_rows(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return pa.table([batch["node"], pa.nulls(n, pa.string()), pa.nulls(n, pa.string()), pa.nulls(n, pa.binary()),
                     pc.cast(batch["fingerprint"], pa.binary())], schema=_JOINED)


def _pair_rows(side: str):
    def rows(batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        fp_a = batch["fp_a"] if "fp_a" in batch.column_names else pa.nulls(n, pa.binary())
        return pa.table([batch[side], batch["a"], batch["b"], fp_a, pa.nulls(n, pa.binary())], schema=_JOINED)

    return rows


def _attach(pairs: "Any", fps: "Any", side: str, partitions: int) -> "Any":
    """The pairs with the fingerprint of their `side` node as `fp_<side>`."""
    def join(group: pa.Table) -> pa.Table:
        is_pair = pc.is_valid(group["a"])
        prints = group.filter(pc.invert(is_pair))
        prints = prints.filter(pc.is_valid(prints["fp"])).select(["key", "fp"])
        joined = group.filter(is_pair).select(["key", "a", "b", "fp_a"]).join(prints, "key", join_type="inner")
        n = joined.num_rows
        return pa.table({"a": joined["a"], "b": joined["b"],
                         "fp_a": joined["fp"] if side == "a" else joined["fp_a"],
                         "fp_b": joined["fp"] if side == "b" else pa.nulls(n, pa.binary())},
                        schema=pa.schema([("a", pa.string()), ("b", pa.string()), ("fp_a", pa.binary()),
                                          ("fp_b", pa.binary())]))

    return by_partition(pairs.union(fps), "key", partitions, join)


def components(edges: "Any", partitions: int, max_rounds: int = 64) -> "Any":
    """(node, root) for every node of an edge Dataset (a, b) that is not its component's smallest:
    alternating large-star and small-star rounds (Kiveris et al. 2014) until a round changes
    nothing, each round one groupby; then every edge joins a node to its root."""
    current = sort_shuffled(edges.rename_columns({"a": "u", "b": "v"})).materialize()
    digest = None
    for _ in range(max_rounds):
        for step in (large_star, small_star):
            parts = partitions_for(2 * current.count(), 2 * _BAND_ROW_BYTES, partitions)
            current = by_partition(current.map_batches(both_directions, batch_format="pyarrow"), "u", parts,
                                   step).materialize()
        now = (current.count(), current.map_batches(_edge_digest, batch_format="pyarrow").sum("h")
               if current.count() else 0)
        if now == digest:
            break
        digest = now
    return current.rename_columns({"u": "node", "v": "root"})


def sort_shuffled(ds: "Any") -> "Any":
    """`ds` (and what derives from it) shuffled by Ray's sort-based shuffle, tasks only: on a small
    cluster it runs a groupby 3x faster than the hash shuffle's actors (2.0 s against 6.0 s for 1,000
    rows on 2 cores), and every pass here is a chain of them. Set on this Dataset's own context, not
    the process's."""
    from ray.data.context import ShuffleStrategy

    ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return ds


def group_duplicates(nodes: "Any", min_similarity: float, max_bucket: int = 64, partitions: int = 8,
                     rows: Optional[int] = None) -> "Any":
    """(node, root) of every non-kept copy: the Dataset's duplicate groups, each rooted at its best copy.
    `partitions`: the fewest of each hash shuffle, about 2 per core; each step takes more as `rows`
    (counted when not given) grows, so that a worker's partition stays about the same size."""
    return components(duplicate_edges(nodes, min_similarity, max_bucket, partitions, rows), partitions)


def pairs_in_memory(ids: list[str], fingerprints: list[bytes], min_similarity: float,
                    max_bucket: int = 64) -> set[tuple[str, str]]:
    """The verified pairs of a small set, by the same band and verify steps, without Ray (dev benchmark)."""
    table = pa.table({"node": ids, "fingerprint": pa.array(fingerprints, pa.binary())})
    bands = explode_bands(table)
    pairs: set[tuple[str, str]] = set()
    t = bucket_pairs(max_bucket)(bands)
    pairs.update(zip(t["a"].to_pylist(), t["b"].to_pylist()))
    fp = dict(zip(ids, fingerprints))
    return {(a, b) for a, b in pairs if similarity(fp[a], fp[b]) >= min_similarity}
