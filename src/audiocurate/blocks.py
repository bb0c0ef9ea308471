"""Cutting a Ray Dataset's blocks to a number of rows, with tasks that reserve what they are
given: the model stages' blocks (`plan`'s split step) and the Parquet source's read blocks
(`sources.Source.dataset`). It imports nothing of the package, so the sources, which `config`
imports, can use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ray


def split_blocks(ds: "ray.data.Dataset", rows_per_block: int, num_cpus: float) -> "ray.data.Dataset":
    """`ds.repartition(target_num_rows_per_block=...)` whose tasks reserve `num_cpus`.

    Ray's streaming repartition only slices blocks, yet its tasks reserve a whole CPU, and
    `repartition` takes no resource arguments: on a one-CPU node beside model actors it waits
    forever (a rerun after a node loss did). Ray 2.60 has no public setting for it: a
    `map_batches` step cannot cut its output by rows (its output blocks are packed up to
    `target_max_block_size` bytes), and Ray fuses a repartition into the map before it only
    where that map reserves a whole CPU too (a missing `num_cpus` counts as 1). So the one
    patch of Ray's internals left is here: the logical operator's `ray_remote_args` (tested in
    test_runtime, so a Ray upgrade that moves them is caught)."""
    ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    op = ds._logical_plan.dag
    if hasattr(op, "ray_remote_args"):
        object.__setattr__(op, "ray_remote_args", {**(op.ray_remote_args or {}), "num_cpus": num_cpus})
    return ds
