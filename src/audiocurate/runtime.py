"""Starting or joining Ray, and sizing stages to what the cluster has.

Locally the driver starts Ray (`ray.init()`); with `ray.address` or RAY_ADDRESS it joins a
cluster. Stage pools marked `auto` are sized here from the cluster's CPUs and GPUs, so a
config written on a laptop runs unchanged on a cluster.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

import ray

from .config import PipelineConfig, RayConfig, StageResources
from .judge.backends import judge_backend


def cpu_nodes() -> list[dict[str, Any]]:
    """The alive Ray nodes that can run tasks (`ray.nodes()` entries)."""
    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


@dataclass(frozen=True)
class ClusterShape:
    cpus: float
    gpus: float
    nodes: int = 1

    @classmethod
    def current(cls) -> "ClusterShape":
        res = ray.cluster_resources()
        return cls(float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)), max(len(cpu_nodes()), 1))


_started_here = False  # whether `init_ray` started the local Ray this process is connected to


def init_ray(config: RayConfig) -> ClusterShape:
    """Join the configured cluster or start a local Ray; idempotent."""
    global _started_here
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        env = worker_environment(config)
        kwargs: dict[str, Any] = {"log_to_driver": True, "logging_level": "WARNING"}
        if address:
            with _callers_sigterm_handler_kept():
                ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
        else:
            # "local": start our own Ray even when a `ray start` cluster runs on this machine.
            # Its processes inherit the environment they start in, so the workers' variables
            # are set there rather than as a runtime_env: a job with one cannot use the workers
            # Ray starts ahead with the node, and each task or actor would wait for a new one.
            with _callers_sigterm_handler_kept(), _token_auth_default_unannounced(), _environment(env):
                ray.init(address="local", num_cpus=config.num_cpus, include_dashboard=False, **kwargs)
            _started_here = True
    return ClusterShape.current()


def worker_environment(config: RayConfig) -> dict[str, str]:
    """The variables Ray's workers run with: `ray.env_vars` and those `ray.forward_env` names."""
    return {**config.env_vars, **{k: os.environ[k] for k in config.forward_env if k in os.environ}}


def own_node_id() -> Optional[str]:
    """The node of a local Ray that `init_ray` started in this process, else None: its workers
    run this machine's Python, so what a task would check there can be checked here."""
    return ray.get_runtime_context().get_node_id() if _started_here and ray.is_initialized() else None


@contextmanager
def _callers_sigterm_handler_kept():
    """`ray.init` replaces the process's SIGTERM handler (and Ray's native failure handler
    then prints a stack dump): a caller that set its own (the CLI: a clean stop, exit 143)
    gets it back."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(before) and signal.getsignal(signal.SIGTERM) is not before:
            signal.signal(signal.SIGTERM, before)


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """`env` set in this process's environment for the block, then restored."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stop_own_ray() -> Optional[threading.Thread]:
    """Stop the local Ray that `init_ray` started, in a thread the caller joins: its processes
    take a second or more to exit, which overlaps the caller's own work (the report) instead
    of following it. A Ray the caller started or joined is left running; returns None then."""
    global _started_here
    if not (_started_here and ray.is_initialized()):
        return None
    _started_here = False
    thread = threading.Thread(target=ray.shutdown, name="audiocurate-ray-shutdown", daemon=True)
    thread.start()
    return thread


class _DropRecord(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextmanager
def log_records_held_back(logger_name: str, text: str) -> Iterator[None]:
    """One logger's records that contain `text` held back for the block (the CLI's whole run)."""
    logger = logging.getLogger(logger_name)
    drop = _DropRecord(text)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextmanager
def _token_auth_default_unannounced() -> Iterator[None]:
    """Ray 2.60 turns token auth on for every new local cluster and warns about it each time
    (a WARNING on every run that needs no action). The default stays; the announcement of it
    is held back while our own local Ray starts. Set RAY_AUTH_MODE to choose otherwise."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    drop = _DropRecord("Token authentication is enabled for this Ray cluster")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def configure_dataset(ds: "ray.data.Dataset", config: RayConfig, *, block_bytes: Optional[int] = None,
                      in_flight_bytes: Optional[int] = None) -> "ray.data.Dataset":
    """Ray Data settings for this Dataset alone: a copy of `ds` with its own DataContext, so
    the caller's global context (and a Dataset they passed in) stay as they were.
    `block_bytes`: the largest block; `in_flight_bytes`: the object-store memory its blocks
    in flight may take (else Ray Data's defaults: 128 MiB, half the object store)."""
    ds = ray.data.Dataset.copy(ds, _deep_copy=True)
    ctx = ds.context
    ctx.max_errored_blocks = config.max_errored_blocks
    ctx.enable_progress_bars = config.progress
    ctx.print_on_execution_start = False
    # Row order does not matter for curation; streaming throughput does.
    ctx.execution_options.preserve_order = False
    if block_bytes is not None:
        ctx.target_max_block_size = block_bytes
    if in_flight_bytes is not None:
        limits = ctx.execution_options.resource_limits
        ctx.execution_options.resource_limits = limits.copy(object_store_memory=in_flight_bytes)
    return ds


def split_blocks(ds: "ray.data.Dataset", rows_per_block: int, num_cpus: float) -> "ray.data.Dataset":
    """`ds.repartition(target_num_rows_per_block=...)` whose tasks reserve `num_cpus`.

    Ray's streaming repartition only slices blocks, yet its tasks reserve a whole CPU, and
    `repartition` takes no resource arguments: on a one-CPU node beside model actors it waits
    forever (a rerun after a node loss did). Its logical operator carries `ray_remote_args`;
    they are set here (tested in test_runtime, so a Ray upgrade that moves them is caught)."""
    ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    op = ds._logical_plan.dag
    if hasattr(op, "ray_remote_args"):
        object.__setattr__(op, "ray_remote_args", {**(op.ray_remote_args or {}), "num_cpus": num_cpus})
    return ds


# What a task of a stage that only moves rows reserves (the 8-row split, the `none` backends,
# select and package, write, resume's drops). Decode reserves `decode.resources.num_cpus`.
ROW_TASK_CPUS = 0.25


def row_task_args(config: RayConfig) -> dict[str, Any]:
    """`map_batches` arguments for a stage that only moves rows: whole blocks, `ROW_TASK_CPUS`."""
    return {**task_args(config), "num_cpus": ROW_TASK_CPUS, "batch_size": None}


def _is_gpu_stage(res: StageResources) -> bool:
    return res.num_gpus > 0


def plan_concurrency(config: PipelineConfig, shape: ClusterShape) -> dict[str, Union[int, tuple[int, int]]]:
    """Actor pool sizes for the model stages (those set to `auto`).

    On CPUs every core runs a Whisper actor (`asr.threads` threads each; one thread per actor
    is fastest, and single-threaded engines never spin-wait on each other) and the judge gets
    one actor per four cores besides, at least one: it costs about a quarter of Whisper per
    clip, so it would leave a core of its own idle most of the time, and the OS shares the
    cores between them instead. On GPUs: one actor per GPU for each stage (stages share GPUs
    by fractions)."""
    asr, judge = config.asr.resources, config.judge.resources
    cores = max(int(shape.cpus), 1)
    out: dict[str, Union[int, tuple[int, int]]] = {}
    if judge.concurrency != "auto":
        out["judge"] = judge.concurrency
    elif _is_gpu_stage(judge):
        out["judge"] = max(int(shape.gpus), 1)
    else:
        out["judge"] = max(1, round(cores / 4))
    if asr.concurrency != "auto":
        out["asr"] = asr.concurrency
    elif _is_gpu_stage(asr):
        out["asr"] = max(int(shape.gpus), 1)
    else:
        out["asr"] = max(1, cores // max(getattr(config.asr, "threads", 1), 1))
    return out


def _max_actors(concurrency: Union[int, tuple[int, int]]) -> int:
    return concurrency[1] if isinstance(concurrency, tuple) else int(concurrency)


# Ray Data's file listing task takes one whole CPU and its readers need some too: actors that
# reserve the rest of a small machine up front leave the dataset waiting forever.
_RESERVED_FOR_TASKS = 1.25


def actor_cpu_scale(config: PipelineConfig, pools: dict[str, Union[int, tuple[int, int]]], shape: ClusterShape) -> float:
    """Factor (<= 1) applied to model actors' logical CPU reservations so that, on a small
    cluster, read and decode tasks can always be scheduled beside them."""
    from .asr import ASR_BACKENDS

    asr_is_actor = ASR_BACKENDS.get(config.asr.backend).runs_as == "actor"
    reserved = (_max_actors(pools["asr"]) * config.asr.resources.num_cpus * asr_is_actor
                + (_max_actors(pools["judge"]) * config.judge.resources.num_cpus
                   if judge_backend(config.judge.backend).runs_as == "actor" else 0.0))
    budget = shape.cpus - _RESERVED_FOR_TASKS
    if reserved <= budget or reserved == 0:
        return 1.0
    return max(budget, 0.1) / reserved


def actor_args(config: RayConfig, res: StageResources, concurrency: Union[int, tuple[int, int]],
               cpu_scale: float = 1.0) -> dict[str, Any]:
    """`map_batches` arguments for an actor stage.

    Restart limits are passed as Ray remote arguments (Ray Data's own default is to restart
    forever, which turns an engine that keeps dying into a hang)."""
    if isinstance(concurrency, tuple):
        compute = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        compute = ray.data.ActorPoolStrategy(size=int(concurrency))
    return {
        "compute": compute,
        "num_cpus": round(res.num_cpus * cpu_scale, 3),
        "num_gpus": res.num_gpus or None,
        "batch_size": res.batch_size,
        "max_restarts": config.actor_max_restarts,
        "max_task_retries": config.actor_max_task_retries,
    }


def task_args(config: RayConfig, res: Optional[StageResources] = None) -> dict[str, Any]:
    """`map_batches` arguments for a CPU task stage."""
    args: dict[str, Any] = {"max_retries": config.task_max_retries}
    if res is not None:
        args["num_cpus"] = res.num_cpus
        args["batch_size"] = res.batch_size
    return args
