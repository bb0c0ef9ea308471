"""The curation pipeline: `build` the lazy Ray Dataset, `run` it into an output folder.

    source ─► [skip finished] ─► decode+resample+audio filters ─► transcribe ─► text filters
           ─► judge ─► select ─► package ─► CurationSink (curated/ rejected/ errors/)

One streaming `ray.data.Dataset`; the driver only plans it and writes the report. Every
input row reaches the sink, where it lands in exactly one of the three outputs.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from typing import Any, Callable, Optional

import ray

from . import __version__
from .config import PipelineConfig
from .core.faults import engine_fault_message
from .engines import engine_of, engine_versions
from .plan import ClusterShape, drop_by_id_step, plan_concurrency, plan_pipeline
from .probe import check_engines
from .runtime import apply_step, configure_dataset, init_ray, stop_own_ray
from .compaction import recover as recover_compaction
from .resume import plan_resume
from .run_state import RunState
from .sinks import CurationSink, OutputDir
from .sources import Source, from_dataset, open_source
from .sources.ids import refuse_duplicate_ids


class RunFailed(RuntimeError):
    """Execution stopped (an engine that keeps dying, lost blocks beyond `max_errored_blocks`);
    what was written stays and a rerun resumes."""


_STAGE_OF_ACTOR = {"TranscribeStage": "asr", "JudgeStage": "judge"}


def explain_failure(e: BaseException, config: PipelineConfig) -> str:
    """One message for a failed execution: an engine's own crash report when an actor
    recorded one (`engines.CrashWitness`); a model actor that kept dying, named; else the
    most telling line of Ray's error (never its guess about the OOM killer)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    crash = re.search(r"EngineCrashed: ([^\n]+)", text)
    if crash:
        return crash.group(1).strip()
    fault = engine_fault_message(text)
    if fault:
        return fault
    actors = [name for name in re.findall(r"MapBatches\((\w+)\)", text) if name in _STAGE_OF_ACTOR]
    if actors and re.search(r"actor died|ActorDiedError|ActorUnavailable", text, re.I):
        stage = _STAGE_OF_ACTOR[actors[0]]
        engine = engine_of(stage, getattr(config, stage).backend)
        return (f"{stage}: {engine.name}: its Ray actor process kept dying (restarted "
                f"{config.ray.actor_max_restarts} times, ray.actor_max_restarts) and recorded no fatal signal, "
                "so it was ended from outside (a memory limit, `ray stop`) or exited on its own; "
                "the worker logs are in /tmp/ray/session_latest/logs")
    return _first_line(text, type(e).__name__)


def _first_line(text: str, kind: str) -> str:
    """The most telling line of a (Ray-wrapped) exception's text."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Died)\b", ln) or "died" in ln.lower():
            return f"{kind}: {ln}"[:600]
    return f"{kind}: {lines[0] if lines else ''}"[:600]


def build(
    config: PipelineConfig,
    source: "Source | ray.data.Dataset",
    *,
    skip_ids: Optional[list[str]] = None,
    keep_ids: Optional[list[str]] = None,
    files: Optional[list[str]] = None,
    shape: Optional[ClusterShape] = None,
    sink: Optional[CurationSink] = None,
    skip_segments: Optional[list[str]] = None,
    reads: Optional[list[dict[str, Any]]] = None,
) -> "ray.data.Dataset":
    """The whole curation as one lazy Dataset of rows ready for `CurationSink`.

    `source` is an opened input (`sources.open_source`) or the user's own Dataset with the
    configured id and audio columns. `skip_ids` drops finished rows (resume), `keep_ids` keeps
    only those (`--limit`); `reads` is a Parquet source's read plan (`resume.plan_resume`),
    which does both by row group instead. With `sink`, rows that fail or are rejected while decoding are
    written by it there and then, and the Dataset carries only the others."""
    if isinstance(source, ray.data.Dataset):
        source = from_dataset(source, config.source)
    return _build(config, source, skip_ids, keep_ids, files, shape or ClusterShape.current(), sink, skip_segments,
                  reads)


def _build(config: PipelineConfig, source: Source, skip_ids: Optional[list[str]], keep_ids: Optional[list[str]],
           files: Optional[list[str]], shape: ClusterShape, sink: Optional[CurationSink],
           skip_segments: Optional[list[str]] = None,
           reads: Optional[list[dict[str, Any]]] = None) -> "ray.data.Dataset":
    if getattr(source, "replays_stored_rows", False):  # `refilter`: stored rows, routed anew, no model
        from .corpus.replay import refiltered

        return refiltered(config, source, skip_ids, config.ray, skip_segments)
    # Blocks of about `decode.read_block_mb` of encoded audio: a unit of work sized by bytes,
    # not rows. It bounds what a model actor answers at once (and what a crash can cost),
    # and spreads decoding over every core even when one file holds the whole input.
    # Segmenting: a block's recordings are cut into segments in that block, which stays one
    # block through the model stages (the segment stage hands them on in parts that end with a
    # recording unless it alone fills one; Ray Data packs the parts into blocks of up to
    # `segment.block_mb`, 32 MB or about 17 minutes of 16 kHz samples, so only a recording
    # that runs past a block's end spans two), so a recording's segments are batched and
    # judged against each other (`filters.speaking_rate`) together. Every worker holds the
    # block it handles, so `segment.block_mb` bounds the run's memory whatever the recording's
    # length; `segment.in_flight_mb` caps the blocks waiting ahead of Whisper besides.
    plan = plan_pipeline(config, shape, columns=source.columns, id_column=source.id_column,
                         audio_column=source.audio_column, fetcher=source.fetcher(), sink=sink,
                         skip_ids=skip_ids, keep_ids=keep_ids, reads=reads, skip_segments=skip_segments)
    ds = source.dataset(files, reads=reads, **plan.read)
    for step in plan.stages:
        ds = apply_step(ds, step)
    return configure_dataset(ds, config.ray, block_bytes=plan.block_bytes, in_flight_bytes=plan.in_flight_bytes)


def _skip_ids(ds: "ray.data.Dataset", id_column: str, rc: Any, skip: Optional[list[str]],
              keep: Optional[list[str]] = None, settled_only: bool = False) -> "ray.data.Dataset":
    """Drop rows whose id is in `skip` (with `settled_only`, only those that settled already),
    keep only those in `keep` (`refilter`'s resume)."""
    return apply_step(ds, drop_by_id_step(rc, id_column, skip, keep, settled_only))


class RunInterrupted(BaseException):
    """The run was stopped by a signal (SIGTERM; SIGINT is Python's KeyboardInterrupt): the
    attempt is marked, what was written stays, and the same command resumes."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def run(
    config: PipelineConfig,
    input_uri: str,
    output_uri: str,
    *,
    limit: Optional[int] = None,
    restart: bool = False,
    retry_errors: bool = False,
    echo: Callable[[str], None] = print,
    stop_ray: bool = False,
) -> dict[str, Any]:
    """Curate INPUT into OUTPUT; resumes when OUTPUT holds an unfinished run of the same
    configuration. Returns the report (also written to OUTPUT/report.json). `stop_ray`: a
    local Ray this run started is stopped once nothing needs it, while the report is built
    (the command line's runs; a Ray you started or joined is left running). `retry_errors`:
    the rows in `errors/` of stages whose faults are the engine's (`Stage.retryable_errors`)
    are processed again. Only one process writes OUTPUT at a time (`lease.OutputLease`)."""
    from .lease import OutputLease

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1 (got {limit})")
    out = OutputDir(output_uri, config.output.storage)
    source = open_source(input_uri, config.source)
    with OutputLease(out, "run") as lease:
        return _run_held(config, source, input_uri, output_uri, out, lease, limit=limit, restart=restart,
                         retry_errors=retry_errors, echo=echo, stop_ray=stop_ray)


def _run_held(config: PipelineConfig, source: Source, input_uri: str, output_uri: str, out: OutputDir,
              lease: Any, *,
              limit: Optional[int], restart: bool, retry_errors: bool, echo: Callable[[str], None],
              stop_ray: bool) -> dict[str, Any]:
    from .report import build_report, write_report

    t_start = time.time()
    t_book = time.time()
    engines = engine_versions(config)
    identity = {
        "input": input_uri,
        "fingerprint": config.fingerprint_hash(engines),
        "config": config.result_fingerprint(),
        "engines": engines,
        "created": t_start,
    }
    state = RunState(out)
    resumed = state.claim(identity, restart=restart)
    recover_compaction(out)  # a compaction killed mid-way is finished first: no row in two files
    state.record_config(config.to_yaml())
    out.clean_tmp()
    if retry_errors and resumed:
        from .verify import reopen_errors

        reopened = reopen_errors(out, source, source.id_column)
        echo(f"audiocurate: {reopened} error rows of engine stages reopened (--retry-errors)")
    # An input row is done when all its output rows are written (one, or each of a recording's
    # segments); the segments written of a recording that is not are skipped after it is cut anew.
    plan = plan_resume(source, out, resumed=resumed, limit=limit, segmented=config.segment.enabled)
    input_rows, done_in_scope, keep_ids = plan.input_rows, plan.finished_rows, plan.keep_ids
    bookkeeping_s = time.time() - t_book
    attempt: dict[str, Any] = {
        "id": f"{int(t_start)}-{uuid.uuid4().hex[:8]}",
        "started": t_start,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "input_rows": input_rows,
        "limit": limit,
        "finished_before": done_in_scope,
        "row_groups": plan.groups,
        "status": "running",
        "version": __version__,
    }
    echo(f"audiocurate: {source.kind} input {input_uri}: {input_rows} rows"
         + (f", {done_in_scope} already done (resuming)" if resumed else ""))
    ray_was_up = ray.is_initialized()
    if plan.remaining > 0:
        shape = init_ray(config.ray)
        attempt["ray_start_s"] = time.time() - t_start
        attempt["cluster"] = {"cpus": shape.cpus, "gpus": shape.gpus}
        attempt["pools"] = {k: v for k, v in plan_concurrency(config, shape).items()}
        models = not getattr(source, "replays_stored_rows", False)  # `refilter` loads none, and its ids are unique
        if models and config.source.check_duplicate_ids and not state.ids_checked():
            t_ids = time.time()
            refuse_duplicate_ids(source, config.ray)
            state.mark_ids_checked(input_uri)
            attempt["duplicate_id_check_s"] = time.time() - t_ids
        if models and config.ray.probe_engines:
            t_probe = time.time()
            probes = check_engines(config)
            attempt["probe_s"] = time.time() - t_probe
            attempt["probes"] = [{"stage": p.stage, "node": p.node, "cached": p.cached, "s": round(p.seconds, 3)}
                                 for p in probes]
        t_book = time.time()
        state.unmark_complete()
        state.record_attempt(attempt)
        bookkeeping_s += time.time() - t_book
        sink = CurationSink(out, source.id_column, source.carried_columns, config.output.rows_per_shard,
                            segmented=config.segment.enabled,
                            audio_sampling_rate=16000 if config.output.audio_format == "flac16k" else None)
        by_row = plan.reads is None
        ds = build(config, source, skip_ids=plan.skip_ids or None, keep_ids=keep_ids if by_row else None,
                   files=plan.files, shape=shape, sink=sink, skip_segments=plan.skip_segments or None,
                   reads=plan.reads)
        t_exec = time.time()
        try:
            ds.write_datasink(sink, ray_remote_args={"num_cpus": config.ray.row_task_cpus})
        except Exception as e:
            reason = explain_failure(e, config)
            attempt.update(status="failed", finished=time.time(), error=reason)
            state.record_attempt(attempt)
            raise RunFailed(
                f"the run stopped: {reason}\nShards finished so far are kept in {output_uri}; "
                "run the same command again to resume."
            ) from e
        except BaseException as e:  # Ctrl-C, SIGTERM: the attempt says so, the rerun resumes
            signal_name = "SIGINT" if isinstance(e, KeyboardInterrupt) else f"signal {getattr(e, 'signum', '?')}"
            attempt.update(status="interrupted", finished=time.time(), error=signal_name)
            with contextlib.suppress(Exception):
                state.record_attempt(attempt)
            raise
        attempt["execute_s"] = time.time() - t_exec
        attempt["written_at_the_end"] = sink.stats  # rows settled while decoding were written there
    from .corpus.passes import corpus_passes_wanted

    if corpus_passes_wanted(config):  # speaking-rate fences per recording/group, dedup, caps
        # Corpus passes: over every written row, before compaction. A pass cut off is done
        # again by the next run of this command (corpus/passes.py), which finds no rows left
        # to stream and comes straight here.
        from .corpus.passes import run_corpus_passes

        t_corpus = time.time()
        if not ray.is_initialized():
            init_ray(config.ray)
        state.unmark_complete()
        attempt["corpus"] = run_corpus_passes(out, config, source.id_column, echo)
        attempt["corpus_s"] = time.time() - t_corpus
    # Resume bookkeeping: output state, finished ids, attempt records (not the shards' own
    # writes or the report, which any run does); recorded so its cost can be checked against
    # the wall time.
    t_book = time.time()
    attempt["finished"] = time.time()
    attempt["wall_s"] = attempt["finished"] - t_start
    attempt["status"] = "finished"
    attempt["bookkeeping_s"] = bookkeeping_s + (time.time() - t_book)
    state.record_attempt(attempt)
    if config.output.compact_mb:
        from .compaction import compact

        compacted = compact(out, config.output.compact_mb, config.ray)
        echo(f"audiocurate: compacted {sum(compacted.files_before.values())} shards into "
             f"{sum(compacted.files_after.values())} files")
    # Exports run on Ray: it is stopped after them.
    stopping = stop_own_ray() if stop_ray and not ray_was_up and not config.output.formats else None
    report = build_report(out, config, input_rows=input_rows, keep_ids=keep_ids, id_column=source.id_column,
                          input_uri=input_uri)
    if not report["accounting"]["ok"]:
        state.unmark_complete()  # before anything else can fail: no _SUCCESS on an output that is wrong
    write_report(out, report, config)
    if config.output.formats and report["accounting"]["ok"]:
        from .exports import ExportOptions
        from .exports.run import export

        report["exports"] = [export(output_uri, fmt, f"{output_uri.rstrip('/')}/exports/{fmt}",
                                    options=ExportOptions(shard_size=config.output.export_shard_size),
                                    storage=config.output.storage, echo=echo, ray_config=config.ray)
                             for fmt in config.output.formats]
        write_report(out, report, config)
    if report["accounting"]["ok"]:
        lease.check()  # a writer whose lease was taken over does not mark the output complete
        state.mark_complete({"finished": time.time(), "input": input_rows,
                           **{k: report["accounting"][k] for k in ("curated", "rejected", "errors")}})
    if stopping is not None:
        stopping.join()
    return report
