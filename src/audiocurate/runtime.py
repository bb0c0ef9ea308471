"""Starting or joining Ray, and turning the planner's steps into Ray Data calls.

Locally the driver starts Ray (`ray.init()`); with `ray.address` or RAY_ADDRESS it joins a
cluster. What each step reserves and how many run is decided in `plan.py` from the
configuration and the cluster's shape, without Ray; `apply_step` hands it to Ray Data.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional

import ray

from .blocks import split_blocks
from .config import RayConfig
from .plan import ClusterShape, Pool, StageSpec, actor_cpu_scale, plan_concurrency, row_stage_args

__all__ = ["ClusterShape", "actor_cpu_scale", "plan_concurrency", "row_task_args", "apply_step", "apply_steps",
           "init_ray", "configure_dataset", "stop_own_ray", "shutdown_ray"]


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
    thread = threading.Thread(target=shutdown_ray, name="audiocurate-ray-shutdown", daemon=True)
    thread.start()
    return thread


def shutdown_ray(executors_timeout_s: float = 60.0) -> None:
    """`ray.shutdown()` once Ray Data's scheduling threads have stopped.

    A dataset cut off (Ctrl-C, SIGTERM, an error) asks its executor thread to stop and waits
    only 2 s for it; on a busy machine the thread is still running, and if it then touches the
    shut-down core worker, Ray's native code ends the whole process with exit code 1 and no
    Python error ("The core worker has already been shutdown")."""
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    deadline = time.monotonic() + executors_timeout_s
    for thread in threading.enumerate():
        # only those told to stop: a dataset still streaming to a consumer would not end here
        if isinstance(thread, StreamingExecutor) and getattr(thread, "_shutdown", True) and thread.is_alive():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    ray.shutdown()


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


def row_task_args(config: RayConfig) -> dict[str, Any]:
    """`map_batches` arguments for a stage that only moves rows: whole blocks, `ray.row_task_cpus`."""
    return row_stage_args(config)


def compute_strategy(pool: Pool) -> Any:
    """Ray Data's strategy for a planned pool."""
    if pool.kind == "tasks":
        return ray.data.TaskPoolStrategy(size=pool.most)
    if isinstance(pool.size, tuple):
        return ray.data.ActorPoolStrategy(min_size=pool.size[0], max_size=pool.size[1])
    return ray.data.ActorPoolStrategy(size=int(pool.size))


def apply_step(ds: "ray.data.Dataset", step: StageSpec) -> "ray.data.Dataset":
    """One planned step (`plan.StageSpec`) on the Dataset."""
    if step.how == "split_blocks":
        return split_blocks(ds, step.args["rows_per_block"], step.args["num_cpus"])
    if step.how == "processor":  # a `ray.data.llm` processor, built here, brings its own pools
        return step.fn(**step.constructor_kwargs)(ds)
    args = dict(step.args)
    if step.pool is not None:
        args["compute"] = compute_strategy(step.pool)
    if step.constructor_kwargs:
        kwargs = dict(step.constructor_kwargs)
        for name in step.object_store_kwargs:  # a list around the ref: Ray hands the ref over, not a copy
            kwargs[name] = [ray.put(kwargs[name])] if kwargs[name] is not None else None
        args["fn_constructor_kwargs"] = kwargs
    return ds.map_batches(step.fn, **args)


def apply_steps(ds: "ray.data.Dataset", steps: Iterable[StageSpec]) -> "ray.data.Dataset":
    """Planned steps, in order, on the Dataset."""
    for step in steps:
        ds = apply_step(ds, step)
    return ds
