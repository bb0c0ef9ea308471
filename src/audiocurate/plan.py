"""From configuration and cluster shape to the pipeline's steps, without Ray.

`plan_pipeline` turns a `PipelineConfig`, the input's columns and a `ClusterShape` (CPUs, GPUs,
nodes: plain numbers) into a `PipelinePlan`: in pipeline order, each step's batch UDF, its
constructor arguments, its `map_batches` arguments and its pool, every Ray resource argument
read from the configuration. `pipeline.build` applies the steps one after another
(`runtime.apply_step`); the unit tests read the plan without starting Ray (`test_plan`). The
plan checks each step's `needs` against the columns the input and the earlier steps provide,
so a missing column stops the run at start, named, instead of failing every block.

Also here: where each filter runs (`placed_filters`) and which stage owns which column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence, Union

import pyarrow as pa

from . import contract as C
from .config import PipelineConfig, RayConfig
from .filters import Filter, build_filters, place_filters

# An actor pool: a fixed size, or `(min, max)` for an autoscaling one.
PoolSize = Union[int, tuple[int, int]]


def cpu_nodes() -> list[dict[str, Any]]:
    """The alive Ray nodes that can run tasks (`ray.nodes()` entries)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


@dataclass(frozen=True)
class ClusterShape:
    """What the cluster has to run on, as the planner needs it: plain numbers, no Ray."""

    cpus: float
    gpus: float
    nodes: int = 1

    @classmethod
    def current(cls) -> "ClusterShape":
        """The shape of the Ray cluster this process is connected to (nodes: `cpu_nodes`)."""
        import ray

        res = ray.cluster_resources()
        nodes = len(cpu_nodes())
        return cls(float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)), max(nodes, 1))


@dataclass(frozen=True)
class Pool:
    """Who runs a step: `tasks` (Ray Data starts them as blocks arrive, at most `size` at once)
    or a pool of `actors` (each loads its model once): `size` workers, or `(min, max)`."""

    kind: Literal["tasks", "actors"]
    size: PoolSize

    @property
    def most(self) -> int:
        return self.size[1] if isinstance(self.size, tuple) else int(self.size)


@dataclass
class StageSpec:
    """One step of the pipeline, as data.

    `how` says how `runtime.apply_step` applies it: `map_batches` (`fn`, a batch UDF instance,
    or a class built once per actor from `constructor_kwargs`), `split_blocks` (cut blocks into
    `args`' `rows_per_block`), or `processor` (`fn(**constructor_kwargs)` builds a
    `ray.data.llm` processor, which brings its own pools; `args` and `pool` record what it was
    built to reserve). `args` are the `map_batches` keyword arguments besides `compute`, which
    `pool` gives; `object_store_kwargs` name constructor arguments that travel through Ray's
    object store, one copy per node. `needs` are the columns the step reads; `needs_settings`
    names the setting behind a column a user chose (`source.id_column`), for the error when it
    is missing."""

    name: str
    fn: Any
    how: Literal["map_batches", "split_blocks", "processor"] = "map_batches"
    constructor_kwargs: dict[str, Any] = field(default_factory=dict)
    object_store_kwargs: tuple[str, ...] = ()
    args: dict[str, Any] = field(default_factory=dict)
    pool: Optional[Pool] = None
    needs: tuple[str, ...] = ()
    needs_settings: dict[str, str] = field(default_factory=dict)
    produces: tuple[str, ...] = ()


@dataclass
class PipelinePlan:
    """The whole pipeline for one run: `read` (the source's `dataset` arguments), `stages` in
    order, `write` (the sink's `ray_remote_args`) and the Dataset's limits (`block_bytes`,
    `in_flight_bytes`; None: Ray Data's defaults)."""

    shape: ClusterShape
    pools: dict[str, PoolSize]
    actor_cpu_scale: float
    read: dict[str, Any]
    stages: list[StageSpec]
    write: dict[str, Any]
    block_bytes: Optional[int] = None
    in_flight_bytes: Optional[int] = None

    def stage(self, name: str) -> StageSpec:
        """The step called `name` (the first, for steps that occur twice)."""
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(f"no step {name!r} in this plan (it has: {', '.join(s.name for s in self.stages)})")


class MissingColumnError(ValueError):
    """A step needs a column that neither the input nor an earlier step provides."""


def _stage_columns(config: PipelineConfig) -> tuple[tuple[str, dict[str, pa.DataType]], ...]:
    """The points a filter can run at, in pipeline order, with the columns each stage adds."""
    return (
        (C.DECODE, {**C.DECODE_COLUMNS, C.PCM: pa.large_binary(),
                    **(C.SEGMENT_COLUMNS if config.segment.enabled else {})}),
        (C.TRANSCRIBE, C.asr_columns(config.asr)),
        (C.SELECT, C.JUDGE_COLUMNS),  # after the judge
    )


def placed_filters(config: PipelineConfig, input_columns: Iterable[str]) -> dict[str, list[Filter]]:
    """The configured filters by the stage that runs them: each at the first stage where the
    input's and the earlier stages' columns cover its `needs`."""
    available: set[str] = set(input_columns)
    points = []
    for stage, columns in _stage_columns(config):
        available = available | set(columns)
        points.append((stage, set(available)))
    placed = place_filters(build_filters(config, input_columns), points)
    # Segmenting: the audio filters judge each segment, in the segment stage, not the recording.
    if config.segment.enabled:
        placed[C.SEGMENT], placed[C.DECODE] = placed[C.DECODE], []
    else:
        placed[C.SEGMENT] = []
    return placed


def produced_by(placed: dict[str, list[Filter]], config: PipelineConfig) -> dict[str, str]:
    """Every column the pipeline writes, and the stage that writes it."""
    out: dict[str, str] = {}
    for stage, columns in _stage_columns(config):
        if stage != C.SELECT:
            out.update({c: stage for c in columns})
        else:
            out.update({c: C.JUDGE for c in columns})
        for f in placed.get(stage, []) + (placed.get(C.SEGMENT, []) if stage == C.DECODE else []):
            out.update({c: f"{stage} (filter {f.name or type(f).__name__})" for c in f.produces})
    if config.segment.enabled:
        out.update({c: C.SEGMENT for c in C.SEGMENT_COLUMNS})
    return out


def columns_after_decode(placed: dict[str, list[Filter]], config: PipelineConfig) -> dict[str, pa.DataType]:
    """The columns later stages add, in the order they add them: what a row settled while
    decoding gets as nulls, so every output shard has one schema."""
    out: dict[str, pa.DataType] = C.asr_columns(config.asr)
    for f in placed.get(C.TRANSCRIBE, []):
        out.update(f.produces)
    out.update(C.JUDGE_COLUMNS)
    for f in placed.get(C.SELECT, []):
        out.update(f.produces)
    return out


# ---- pools and reservations ---------------------------------------------------------------

def plan_concurrency(config: PipelineConfig, shape: ClusterShape) -> dict[str, PoolSize]:
    """Actor pool sizes for the model stages (those set to `auto`).

    On CPUs every core runs a Whisper actor (`asr.threads` threads each; one thread per actor
    is fastest, and single-threaded engines never spin-wait on each other) and the judge gets
    one actor per four cores besides, at least one: it costs about a quarter of Whisper per
    clip, so it would leave a core of its own idle most of the time, and the OS shares the
    cores between them instead. On GPUs: one actor per GPU for each stage (stages share GPUs
    by fractions)."""
    asr, judge = config.asr.resources, config.judge.resources
    cores = max(int(shape.cpus), 1)
    out: dict[str, PoolSize] = {}
    if judge.concurrency != "auto":
        out["judge"] = judge.concurrency
    elif judge.num_gpus > 0:
        out["judge"] = max(int(shape.gpus), 1)
    else:
        out["judge"] = max(1, round(cores / 4))
    if asr.concurrency != "auto":
        out["asr"] = asr.concurrency
    elif asr.num_gpus > 0:
        out["asr"] = max(int(shape.gpus), 1)
    else:
        out["asr"] = max(1, cores // max(getattr(config.asr, "threads", 1), 1))
    return out


def actor_cpu_scale(config: PipelineConfig, pools: Mapping[str, PoolSize], shape: ClusterShape) -> float:
    """Factor (<= 1) applied to model actors' logical CPU reservations so that, on a small
    cluster, read and decode tasks can always be scheduled beside them: the actors' pools
    together reserve at most the cluster's CPUs less `ray.task_headroom_cpus`."""
    from .asr import ASR_BACKENDS
    from .judge.backends import judge_backend

    reserved = 0.0
    if ASR_BACKENDS.get(config.asr.backend).runs_as == "actor":
        reserved += Pool("actors", pools["asr"]).most * config.asr.resources.num_cpus
    if judge_backend(config.judge.backend).runs_as == "actor":
        reserved += Pool("actors", pools["judge"]).most * config.judge.resources.num_cpus
    budget = shape.cpus - config.ray.task_headroom_cpus
    if reserved <= budget or reserved == 0:
        return 1.0
    return max(budget, 0.1) / reserved


def task_stage_args(rc: RayConfig, num_cpus: float, batch_size: Optional[int] = None) -> dict[str, Any]:
    """`map_batches` arguments of a CPU task step: `num_cpus` each, `batch_size` rows per call
    (None: a whole block)."""
    return {"max_retries": rc.task_max_retries, "num_cpus": num_cpus, "batch_size": batch_size}


def row_stage_args(rc: RayConfig) -> dict[str, Any]:
    """`map_batches` arguments of a step that only moves rows: whole blocks, `ray.row_task_cpus`."""
    return task_stage_args(rc, rc.row_task_cpus)


def actor_stage_args(rc: RayConfig, resources: Any, cpu_scale: float = 1.0) -> dict[str, Any]:
    """`map_batches` arguments of a model actor step, besides its pool: whole blocks (the stage
    batches its active rows itself), the stage's reservations (CPUs scaled by `cpu_scale`), and
    restart limits (Ray Data's own default restarts forever, which turns an engine that keeps
    dying into a hang)."""
    return {
        "num_cpus": round(resources.num_cpus * cpu_scale, 3),
        "num_gpus": resources.num_gpus or None,
        "batch_size": None,
        "max_restarts": rc.actor_max_restarts,
        "max_task_retries": rc.actor_max_task_retries,
    }


def decode_pool(config: PipelineConfig, shape: ClusterShape) -> Pool:
    """Decode's tasks: `decode.resources.concurrency`, `auto` being one per CPU of the cluster."""
    size = config.decode.resources.concurrency
    return Pool("tasks", max(int(shape.cpus), 1) if size == "auto" else int(size))


# ---- the pipeline's steps -----------------------------------------------------------------

_PYARROW = {"batch_format": "pyarrow", "udf_modifying_row_count": False}
_ROWS_CHANGE = {"batch_format": "pyarrow", "udf_modifying_row_count": True}


def plan_pipeline(config: PipelineConfig, shape: ClusterShape, *, columns: Sequence[str], id_column: str,
                  audio_column: str, fetcher: Any = None, sink: Any = None,
                  skip_ids: Optional[Sequence[str]] = None, keep_ids: Optional[Sequence[str]] = None,
                  reads: Optional[list[dict[str, Any]]] = None,
                  skip_segments: Optional[Sequence[str]] = None) -> PipelinePlan:
    """The run's steps, in order, with every argument Ray gets; see the module's docstring.

    `columns`, `id_column`, `audio_column`, `fetcher`: the input's (`sources.Source`).
    `skip_ids`/`keep_ids`: rows to drop (resume) or keep only (`--limit`) by id; `reads`, a
    Parquet source's read plan, does both by row group instead; `skip_segments`: segments
    already written (resume of a folder's or your Dataset's segmented run). With `sink`, rows
    that settle while decoding are written by it there and then. Raises `MissingColumnError`
    where a step needs a column it would not have."""
    from .resume import DropWrittenSegments
    from .segment.stage import SegmentStage
    from .sinks import SettledRowsStage
    from .stages import DecodeStage, PackageStage, SelectStage

    rc = config.ray
    pools = plan_concurrency(config, shape)
    scale = actor_cpu_scale(config, pools, shape)
    segmented = config.segment.enabled
    placed = placed_filters(config, columns)
    C.check_columns(columns, produced_by(placed, config), audio_column)
    chosen = {id_column: "source.id_column", audio_column: "source.audio_column"}
    steps: list[StageSpec] = []

    def drop_written_segments(name: str, settled_only: bool) -> Optional[StageSpec]:
        # By the list each row carries (Parquet row groups), else by id (folder listings, your Dataset).
        if reads is not None:
            return StageSpec(name, DropWrittenSegments(id_column, settled_only=settled_only),
                             args={**_ROWS_CHANGE, **row_stage_args(rc)}, needs=(id_column,), needs_settings=chosen)
        if skip_segments:
            return drop_by_id_step(rc, id_column, skip_segments, settled_only=settled_only, name=name)
        return None

    if skip_ids or keep_ids is not None:
        steps.append(drop_by_id_step(rc, id_column, skip_ids, keep_ids))
    # Decode: one task per read block (`decode.read_block_mb`, sized by bytes) by default, the
    # unit of work from here on; bundling blocks up again would undo that. Ray Data reserves
    # each operator about half the cluster's CPUs over the number of operators and leaves what
    # is unreserved to the stages after decode: decode's small per-task share lets a task per
    # core run inside its own reservation (`decode.resources`).
    res = config.decode.resources
    decoding = task_stage_args(rc, res.num_cpus, res.batch_size)
    pool = decode_pool(config, shape)
    decode = DecodeStage(config.decode, audio_column, fetcher, placed[C.DECODE])
    if not segmented:
        steps.append(StageSpec(C.DECODE, decode, args={**_PYARROW, **decoding}, pool=pool,
                               needs=tuple(decode.needs), needs_settings=chosen, produces=tuple(decode.columns())))
    else:  # decoded as it is cut: a recording's samples are never whole in memory
        segment = SegmentStage(config.segment, id_column, placed[C.SEGMENT], audio_column, decode)
        steps.append(StageSpec(C.SEGMENT, segment, args={**_ROWS_CHANGE, **decoding}, pool=pool,
                               needs=(id_column, audio_column), needs_settings=chosen,
                               produces=tuple({**decode.produces, **segment.columns()})))
        # resume: the segments already written of cut-off recordings, those that settled here
        step = drop_written_segments("drop_written_settled_segments", settled_only=True)
        steps.extend([step] if step else [])
    if sink is not None:
        # Rows that settled while decoding (corrupt, silent, too short) go to their outputs
        # there, in the decode task (the same arguments: Ray fuses it into decode's task),
        # instead of riding through every model stage.
        steps.append(StageSpec("write_settled", SettledRowsStage(sink, columns_after_decode(placed, config),
                                                                 audio_column),
                               args={**_ROWS_CHANGE, **decoding}, pool=pool))
    # Model stages take blocks of one ASR batch of clips still in play; segments, the block of
    # their recording.
    if not segmented:
        steps.append(StageSpec("split", None, how="split_blocks",
                               args={"rows_per_block": config.asr.resources.batch_size,
                                     "num_cpus": rc.row_task_cpus}))
    steps.append(transcribe_step(config, placed[C.TRANSCRIBE], pools["asr"], scale))
    if segmented:  # the rest of them, transcribed again for their recording's fences
        step = drop_written_segments("drop_written_segments", settled_only=False)
        steps.extend([step] if step else [])
    steps.extend(judge_steps(config, pools["judge"], scale))
    # Select is fused into packaging's task (the same arguments), which encodes curated FLAC.
    select = SelectStage(placed[C.SELECT])
    steps.append(StageSpec(C.SELECT, select, args={**_PYARROW, **row_stage_args(rc)},
                           produces=tuple(select.columns())))
    package = PackageStage(config.output, audio_column, id_column)
    steps.append(StageSpec(C.PACKAGE, package, args={**_PYARROW, **row_stage_args(rc)},
                           needs=tuple(package.needs), needs_settings=chosen, produces=tuple(package.columns())))
    check_needs(steps, columns)
    plan = PipelinePlan(shape=shape, pools=pools, actor_cpu_scale=scale, stages=steps,
                        read={"num_cpus": res.num_cpus, "block_bytes": int(config.decode.read_block_mb * 2**20),
                              "segmented": segmented},
                        write={"num_cpus": rc.row_task_cpus})
    if segmented:
        plan.block_bytes = int(config.segment.block_mb * 2**20)
        plan.in_flight_bytes = int(config.segment.in_flight_mb * 2**20 * shape.nodes)
    return plan


def drop_by_id_step(rc: RayConfig, id_column: str, skip: Optional[Sequence[str]],
                    keep: Optional[Sequence[str]] = None, settled_only: bool = False,
                    name: str = "skip_ids") -> StageSpec:
    """Drop rows whose id is in `skip` (with `settled_only`, only those that settled already),
    keep only those in `keep` (resume, `--limit`): one actor, so the id set is built once from
    the object store, reserving `ray.id_filter_cpus`."""
    from .stages import SkipIdsStage

    return StageSpec(name, SkipIdsStage, constructor_kwargs={
        "id_column": id_column, "skip_ref": list(skip) if skip else None,
        "keep_ref": list(keep) if keep is not None else None, "settled_only": settled_only},
        object_store_kwargs=("skip_ref", "keep_ref"), pool=Pool("actors", 1),
        args={"batch_format": "pyarrow", "num_cpus": rc.id_filter_cpus,
              "max_restarts": rc.actor_max_restarts, "max_task_retries": rc.actor_max_task_retries},
        needs=(id_column,), needs_settings={id_column: "source.id_column"})


def _filter_columns(filters: Iterable[Filter]) -> dict[str, pa.DataType]:
    out: dict[str, pa.DataType] = {}
    for f in filters:
        out.update(f.produces)
    return out


# ---- the model stages, from what their backends declare -----------------------------------

def transcribe_step(config: PipelineConfig, filters: Sequence[Filter], size: PoolSize,
                    cpu_scale: float = 1.0) -> StageSpec:
    """The transcribe step, with the filters placed there, as `asr.backend` runs (`runs_as`):
    `stages.TranscribeStage` in a pool of `size` actors, or the backend's own `stage` as a task."""
    from .asr import ASR_BACKENDS

    backend = ASR_BACKENDS.get(config.asr.backend)
    if config.segment.enabled and not getattr(backend, "segments", True):
        raise ValueError(f"asr.backend {config.asr.backend} reads one transcript per input row; it cannot transcribe "
                         "the segments of a recording (segment.enabled)")
    produces = {**C.asr_columns(config.asr), **_filter_columns(filters)}
    return _model_step(C.TRANSCRIBE, "asr", backend, config, list(filters), size, cpu_scale, tuple(produces),
                       {"batch_format": "pyarrow"})


def judge_steps(config: PipelineConfig, size: PoolSize, cpu_scale: float = 1.0) -> list[StageSpec]:
    """The judge's steps, as `judge.backend` runs (`runs_as`): `stages.JudgeStage` in a pool of
    `size` actors, the backend's own `stage` as a task, or a `ray.data.llm` processor with its
    own pool of `size` followed by the task that turns its answers into the judge's columns.
    Also what applies a judge alone (`runtime.apply_steps(ds, judge_steps(config, 1))`)."""
    from .judge.backends import judge_backend

    backend = judge_backend(config.judge.backend)
    if backend.runs_as != "processor":
        return [_model_step(C.JUDGE, "judge", backend, config, None, size, cpu_scale, tuple(C.JUDGE_COLUMNS),
                            _PYARROW)]
    from .judge.processors import ProcessorJudgeResultStage, judge_processor, processor_judge_model

    res = config.judge.resources
    processor = StageSpec(C.JUDGE, judge_processor, how="processor",
                          constructor_kwargs={"config": config, "concurrency": size},
                          args={"num_cpus": res.num_cpus, "num_gpus": res.num_gpus or None,
                                "batch_size": res.batch_size},
                          pool=Pool("actors", size), needs=_backend_needs(backend, config.judge, ()),
                          needs_settings=_chosen_columns(config.judge, "judge"))
    scores = ProcessorJudgeResultStage(config, processor_judge_model(config))
    return [processor, StageSpec("judge_scores", scores, args={**_PYARROW, "num_cpus": config.ray.row_task_cpus},
                                 produces=tuple(C.JUDGE_COLUMNS))]


def _model_step(name: str, section_name: str, backend: Any, config: PipelineConfig,
                filters: Optional[list[Filter]], size: PoolSize, cpu_scale: float, produces: tuple[str, ...],
                format_args: dict[str, Any]) -> StageSpec:
    """A model stage as its backend runs it: an `actor` backend inside the section's engine
    stage (`stages.TranscribeStage`, `stages.JudgeStage`: they create the engine from the
    registry in each actor), a `task` backend as the stage it names (`backend.stage`)."""
    rc = config.ray
    section = getattr(config, section_name)
    settings = _chosen_columns(section, section_name)
    given = {"filters": filters} if filters is not None else {}
    if backend.runs_as == "actor":
        stage = engine_stage(section_name)
        return StageSpec(name, stage, constructor_kwargs={
            "config": section, **given, "engine_fault_retries": rc.engine_fault_retries,
            "engine_fault_backoff_s": rc.engine_fault_backoff_s},
            args={**format_args, **actor_stage_args(rc, section.resources, cpu_scale)}, pool=Pool("actors", size),
            needs=_backend_needs(backend, section, stage.needs), needs_settings=settings, produces=produces)
    if backend.runs_as == "task":
        task = backend.stage(section, **given)
        return StageSpec(name, task, args={"batch_format": "pyarrow", **row_stage_args(rc)},
                         needs=_backend_needs(backend, section, task.needs), needs_settings=settings,
                         produces=produces)
    raise ValueError(f"{section_name}.backend {section.backend!r} runs as {backend.runs_as!r}; "
                     f"the {name} step runs an actor or a task backend")


def engine_stage(section_name: str) -> type:
    """The stage an `actor` backend of the section runs inside, once per actor."""
    from .stages import JudgeStage, TranscribeStage

    return {"asr": TranscribeStage, "judge": JudgeStage}[section_name]


def _backend_needs(backend: Any, section: Any, stage_needs: Sequence[str]) -> tuple[str, ...]:
    """The columns a model step reads: those its backend declares (`needs`), else its stage's,
    and an input column its section names (`text_column`)."""
    needs = tuple(getattr(backend, "needs", ()) or stage_needs)
    text_column = getattr(section, "text_column", None)
    return needs + (text_column,) if text_column and text_column not in needs else needs


def _chosen_columns(section: Any, section_name: str) -> dict[str, str]:
    text_column = getattr(section, "text_column", None)
    return {text_column: f"{section_name}.text_column"} if text_column else {}


def check_needs(steps: Sequence[StageSpec], input_columns: Iterable[str]) -> None:
    """Each step's `needs` against what the input and the steps before it provide; the first
    that lacks one raises `MissingColumnError`, naming the step, the column (and the setting
    that chose it) and what is available there, by where it comes from."""
    origin: dict[str, str] = {c: "input" for c in input_columns}
    for c in C.STATUS_COLUMNS:
        origin.setdefault(c, "the row contract")
    for step in steps:
        missing = [c for c in step.needs if c not in origin]
        if missing:
            column = missing[0]
            setting = step.needs_settings.get(column)
            subject = f"{setting} {column!r}" if setting else f"the column {column!r}"
            by_origin: dict[str, list[str]] = {}
            for c, where in origin.items():
                by_origin.setdefault(where, []).append(c)
            available = "; ".join(f"{', '.join(cols)} ({where})" for where, cols in by_origin.items())
            raise MissingColumnError(
                f"{step.name} stage: {subject} is not a column of the input, and no stage before {step.name} "
                f"writes it. Available there: {available}.")
        for c in step.produces:
            origin.setdefault(c, step.name)
