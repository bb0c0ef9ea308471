"""Planning: pool sizes, actor reservations, block splitting, and the caps a Dataset carries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray

from audiocurate.blocks import split_blocks
from audiocurate.config import PipelineConfig
from audiocurate.runtime import ClusterShape, actor_cpu_scale, plan_concurrency


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


def test_decode_runs_a_task_per_core_within_its_own_reservation(ray_local, demo_parquet, tmp_path):
    """Ray Data reserves each operator about half the CPUs over the number of operators and
    hands the rest to the stages after decode: decode's tasks reserve a share small enough for
    a task per core to fit in its own reservation (2 CPUs: 0.17 for 6 operators), capped at a
    task per core; the stages that only move rows reserve `ray.row_task_cpus` each, uncapped.
    The planner's arguments reach Ray Data's operators as planned (`runtime.apply_step`)."""
    from audiocurate.pipeline import build
    from audiocurate.sinks import CurationSink, OutputDir
    from audiocurate.sources import open_source

    config = PipelineConfig.load(overrides=["ray.progress=false", "ray.row_task_cpus=0.2"])
    source = open_source(demo_parquet, config.source)
    sink = CurationSink(OutputDir(str(tmp_path), config.output.storage), source.id_column, source.carried_columns,
                        config.output.rows_per_shard)
    ds = build(config, source, shape=ClusterShape(8, 0), sink=sink)
    ops, op = {}, ds._logical_plan.dag
    while op is not None:
        ops[op.name] = op
        op = op.input_dependencies[0] if op.input_dependencies else None
    n_ops_after_fusion = 6  # decode+settled, split, transcribe, judge, select+package, write
    assert config.decode.resources.num_cpus * 2 <= 2 * 0.5 / n_ops_after_fusion
    for name in ("MapBatches(DecodeStage)", "MapBatches(SettledRowsStage)"):
        op = next(o for n, o in ops.items() if n.startswith(name))
        # the same as decode's: Ray fuses the settled rows' writes into decode's task
        assert op.compute.size == 8 and op.ray_remote_args["num_cpus"] == config.decode.resources.num_cpus, name
    for name in ("StreamingRepartition[num_rows_per_block=8", "MapBatches(SelectStage)", "MapBatches(PackageStage)"):
        op = next(o for n, o in ops.items() if n.startswith(name))
        assert op.ray_remote_args["num_cpus"] == config.ray.row_task_cpus, name
    transcribe = next(o for n, o in ops.items() if n.startswith("MapBatches(TranscribeStage)"))
    assert transcribe.compute.max_size == 8 and transcribe.ray_remote_args["max_restarts"] == 3
    # a fixed number of decode tasks, and calls of that many rows, when configured
    fixed = PipelineConfig.load(overrides=["ray.progress=false", "decode.resources.concurrency=3",
                                           "decode.resources.batch_size=16"])
    op = build(fixed, source, shape=ClusterShape(8, 0))._logical_plan.dag
    while not op.name.startswith("MapBatches(DecodeStage)"):
        op = op.input_dependencies[0]
    assert op.compute.size == 3 and op.batch_size == 16


def test_resume_and_limit_filter_ids_in_one_actor_that_reserves_the_configured_share(ray_local, demo_parquet):
    from audiocurate.pipeline import build
    from audiocurate.sources import open_source

    config = PipelineConfig.load(overrides=["ray.progress=false", "ray.id_filter_cpus=0.03"])
    source = open_source(demo_parquet, config.source)
    ds = build(config, source, shape=ClusterShape(2, 0), skip_ids=["x"], keep_ids=["x", "y"])
    op = ds._logical_plan.dag
    while not op.name.startswith("MapBatches(SkipIdsStage)"):
        op = op.input_dependencies[0]
    assert op.compute.max_size == 1 and op.ray_remote_args["num_cpus"] == 0.03
    assert {k: v for k, v in op.fn_constructor_kwargs.items() if k != "skip_ref" and k != "keep_ref"} == \
        {"id_column": "id", "settled_only": False}
    assert isinstance(op.fn_constructor_kwargs["skip_ref"][0], ray.ObjectRef)


def test_a_local_ray_gives_workers_the_configured_environment_and_stops_in_the_background(ray_local):
    """The workers' variables reach a local Ray through the environment it starts in (not a
    runtime_env, whose jobs cannot use the workers Ray starts ahead); the driver's own
    environment is left as it was, and `stop_own_ray` stops only a Ray `init_ray` started."""

    from audiocurate.config import RayConfig
    from audiocurate.runtime import init_ray, stop_own_ray

    ray.shutdown()
    assert "AUDIOCURATE_PROBE" not in os.environ
    try:
        init_ray(RayConfig(num_cpus=2, progress=False, env_vars={"AUDIOCURATE_PROBE": "from-config"}))
        assert "AUDIOCURATE_PROBE" not in os.environ
        assert ray.get_runtime_context().runtime_env.get("env_vars") is None

        @ray.remote(num_cpus=0.1)
        def probe():
            return os.environ.get("AUDIOCURATE_PROBE")

        assert ray.get(probe.remote()) == "from-config"
        stopping = stop_own_ray()
        assert stopping is not None
        stopping.join(timeout=60)
        assert not ray.is_initialized()
        assert stop_own_ray() is None  # nothing of ours left to stop
    finally:
        if not ray.is_initialized():
            init_ray(RayConfig(num_cpus=2, progress=False))  # the session's Ray, for later tests


def test_a_processor_step_is_built_where_it_is_applied_and_its_steps_follow_in_order(ray_local):
    """`how="processor"`: the step's function builds a Dataset -> Dataset processor (a
    `ray.data.llm` one in a run) from its constructor arguments when `apply_step` runs it."""
    from audiocurate.plan import StageSpec
    from audiocurate.runtime import apply_steps

    built = []

    def build(offset):
        built.append(offset)
        return lambda ds: ds.map_batches(lambda b: {"id": b["id"] + offset}, batch_format="numpy")

    steps = [StageSpec("add", build, how="processor", constructor_kwargs={"offset": 10}),
             StageSpec("double", lambda b: {"id": b["id"] * 2}, args={"batch_format": "numpy"})]
    ds = apply_steps(ray.data.range(3), steps)
    assert built == [10]  # built once, while the Dataset is assembled
    assert sorted(r["id"] for r in ds.take_all()) == [20, 22, 24]


_CUT_OFF_RUN = '''
import os, signal, threading, time

import ray
from ray.data._internal.execution.streaming_executor import StreamingExecutor

from audiocurate.runtime import shutdown_ray

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
step = StreamingExecutor._scheduling_loop_step
started = time.monotonic()


def busy_step(self, topology):
    if time.monotonic() - started > 1.0 and not hasattr(self, "cut"):
        # Ctrl-C a second into the execution, while this step outlasts the 2 s a cut-off executor
        # waits for its thread (a loaded machine; Ray Data's own step waits on an actor's answer)
        self.cut = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(4)
    return step(self, topology)


StreamingExecutor._scheduling_loop_step = busy_step
shutdown = ray.shutdown
alive_at_shutdown = []


def watched_shutdown(*args, **kwargs):
    alive_at_shutdown.extend(t.name for t in threading.enumerate()
                             if isinstance(t, StreamingExecutor) and t.is_alive())
    return shutdown(*args, **kwargs)


ray.shutdown = watched_shutdown
try:
    ray.data.range(1000, override_num_blocks=50).map_batches(lambda b: (time.sleep(0.5), b)[1]).materialize()
except KeyboardInterrupt:
    shutdown_ray()
print("executor threads alive at ray.shutdown:", alive_at_shutdown)
'''


@pytest.mark.slow
def test_ray_is_shut_down_only_after_a_cut_off_datasets_scheduling_thread_has_stopped(tmp_path):
    """Ctrl-C on a loaded machine: Ray Data waits 2 s for the executor thread, which may still be
    in a call into Ray; shutting Ray down under it ended the process with exit code 1 and no
    Python error ("The core worker has already been shutdown"), not 130. Seen in CI."""
    script = tmp_path / "cut_off.py"
    script.write_text(_CUT_OFF_RUN)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    assert "executor threads alive at ray.shutdown: []" in done.stdout, done.stdout
