"""Planning: pool sizes, actor reservations, block splitting, and the caps a Dataset carries."""

from __future__ import annotations

import ray

from audiocurate.config import PipelineConfig
from audiocurate.runtime import ClusterShape, actor_cpu_scale, plan_concurrency, split_blocks


def test_cpu_plan_gives_every_core_a_whisper_actor_and_a_shared_judge():
    config = PipelineConfig()
    assert plan_concurrency(config, ClusterShape(2, 0)) == {"asr": 2, "judge": 1}
    assert plan_concurrency(config, ClusterShape(16, 0)) == {"asr": 16, "judge": 4}
    two_threads = PipelineConfig.load(overrides=["asr.threads=2"])
    assert plan_concurrency(two_threads, ClusterShape(16, 0))["asr"] == 8


def test_gpu_plan_is_one_actor_per_gpu_and_fixed_pools_are_kept():
    config = PipelineConfig.load(profile="gpu")
    assert plan_concurrency(config, ClusterShape(32, 4)) == {"asr": 4, "judge": 4}
    fixed = PipelineConfig.load(overrides=["asr.resources.concurrency=3", "judge.resources.concurrency=[1, 2]"])
    assert plan_concurrency(fixed, ClusterShape(2, 0)) == {"asr": 3, "judge": (1, 2)}


def test_actor_reservations_shrink_on_a_small_node_so_tasks_still_run():
    config = PipelineConfig()
    assert actor_cpu_scale(config, {"asr": 2, "judge": 1}, ClusterShape(16, 0)) == 1.0
    scale = actor_cpu_scale(config, {"asr": 2, "judge": 1}, ClusterShape(1, 0))
    reserved = scale * (2 * config.asr.resources.num_cpus + config.judge.resources.num_cpus)
    assert 0 < reserved < 1 - config.decode.resources.num_cpus


def test_split_blocks_reserves_what_it_is_given_not_a_whole_cpu():
    # Ray's own repartition reserves a whole CPU per task: on a one-CPU node beside model
    # actors it never ran (a rerun after a node loss hung).
    ds = split_blocks(ray.data.range(10), 4, 0.25)
    op = ds._logical_plan.dag
    assert type(op).__name__ == "StreamingRepartition"
    assert op.ray_remote_args["num_cpus"] == 0.25


def test_segmented_runs_cap_block_size_and_memory_in_flight_on_their_own_dataset(ray_local):
    from audiocurate.config import RayConfig
    from audiocurate.runtime import configure_dataset

    def _parts(batch):  # four 1 MiB tables from one input block, as the segment stage hands them on
        import numpy as np
        import pyarrow as pa

        for i in range(4):
            yield pa.table({"i": [i], "pcm": pa.array([np.zeros(1 << 20, np.uint8).tobytes()], pa.large_binary())})

    ds = ray.data.range(1, override_num_blocks=1).map_batches(_parts, batch_format="pyarrow")
    plain = configure_dataset(ds, RayConfig())
    capped = configure_dataset(ds, RayConfig(), block_bytes=1 << 20, in_flight_bytes=64 << 20)
    assert capped.context.execution_options.resource_limits.object_store_memory == 64 << 20
    # Ray packs a task's parts into blocks up to the target: one block, or one per part.
    assert plain.materialize().num_blocks() == 1
    assert capped.materialize().num_blocks() == 4
    # The caller's own context is left as it was.
    assert ray.data.DataContext.get_current().target_max_block_size != 1 << 20
    assert ray.data.DataContext.get_current().execution_options.resource_limits.object_store_memory != 64 << 20


def test_a_segmented_pipeline_dataset_carries_the_segment_caps(ray_local, demo_parquet):
    from audiocurate.pipeline import build
    from audiocurate.sources import open_source

    config = PipelineConfig.load(profile="longform", overrides=["segment.block_mb=8", "segment.in_flight_mb=100"])
    ds = build(config, open_source(demo_parquet, config.source), shape=ClusterShape(2, 0, nodes=3))
    assert ds.context.target_max_block_size == 8 << 20
    assert ds.context.execution_options.resource_limits.object_store_memory == 3 * 100 << 20
