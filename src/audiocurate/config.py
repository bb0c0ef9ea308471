"""Pipeline configuration: pydantic models whose field descriptions are the reference manual.

A config is data. It loads from YAML (`PipelineConfig.from_yaml`), can start from a named
profile shipped with the package (`default`, `gpu`), and takes dotted overrides from the
command line (`asr.beam_size=5`). Everything a stage needs (model, batch size, resources)
comes from here, never from constants at the call site.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, create_model, field_validator,
                      model_validator)
from pydantic_core import core_schema

from .asr import ASR_BACKENDS
from .core.registry import Registry
from .core.settings import SPEED_ONLY, SPEED_ONLY_SECTION, Settings, StageResources, changes_results, in_identity
from .exports import EXPORT_FORMATS
from .filters.base import FILTERS
from .judge.backends import JUDGE_BACKENDS
from .sources import SOURCE_FORMATS
from .storage import StorageConfig

__all__ = ["AsrConfig", "JudgeConfig", "PipelineConfig", "SPEED_ONLY", "StageResources", "changes_results",
           "FasterWhisperConfig", "TransformersAsrConfig", "LlamaCppJudgeConfig", "TransformersJudgeConfig",
           "VllmJudgeConfig", "HttpJudgeConfig", "ExistingTranscriptConfig", "NoJudgeConfig", "StorageConfig"]

# Each built-in backend's config class, by its old name here: imported from its own module on
# first use (`from audiocurate.config import LlamaCppJudgeConfig`), so importing the configuration
# imports no backend.
_BACKEND_CONFIG_NAMES = {
    "FasterWhisperConfig": (ASR_BACKENDS, "faster_whisper"), "TransformersAsrConfig": (ASR_BACKENDS, "transformers"),
    "ExistingTranscriptConfig": (ASR_BACKENDS, "none"), "LlamaCppJudgeConfig": (JUDGE_BACKENDS, "llama_cpp"),
    "TransformersJudgeConfig": (JUDGE_BACKENDS, "transformers"), "VllmJudgeConfig": (JUDGE_BACKENDS, "vllm"),
    "HttpJudgeConfig": (JUDGE_BACKENDS, "http"), "NoJudgeConfig": (JUDGE_BACKENDS, "none"),
}


def __getattr__(name: str) -> Any:
    if name in _BACKEND_CONFIG_NAMES:
        registry, backend = _BACKEND_CONFIG_NAMES[name]
        return registry.config_of(backend)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _one_of(registry: Registry[Any], value: Any, *, also: tuple[str, ...] = ()) -> Any:
    """`value` when it names an entry of `registry` (or one of `also`); else a clear error."""
    if value not in also and value not in registry:
        raise ValueError(f"unknown {registry.kind} {value!r}; known: {', '.join([*also, *registry.names()])}")
    return value


class SourceConfig(Settings):
    """Where the audio comes from and how its rows are laid out."""

    format: str = Field(
        "auto",
        description="`parquet`: one row per clip with encoded audio bytes in `audio_column` "
        "(Ray's Common Voice copy: `id`, `audio_bytes`). `hf_parquet`: Hugging Face `datasets` "
        "layout, an `audio` struct of `bytes` and `path`. `folder`: audio files found "
        "recursively, optionally joined with a manifest. `auto` picks `folder` for a directory "
        "holding audio files, and for Parquet looks at the audio column's type. Any other source "
        "kind registered in `sources.SOURCE_FORMATS`.",
    )
    id_column: str = Field(
        "id",
        description="Column with a unique id per clip. It keys the outputs and resuming. For "
        "folders, the id is the file's path relative to the folder unless the manifest has this column.",
    )
    check_duplicate_ids: bool = Field(
        True, json_schema_extra=SPEED_ONLY,
        description="Before the first attempt on an output, count the input's ids (the id column alone, "
        "by hash bucket in Ray tasks), and refuse an input with an id twice, naming them (resume "
        "and accounting key rows by id), and an input with null ids (counted, the first one located). "
        "Runs once per output, not on resume. Off: neither is checked; the run goes on and the report says "
        "`accounting MISMATCH` with the duplicates counted.")
    audio_column: Optional[str] = Field(
        None,
        description="Column holding the encoded audio (bytes), an `{bytes, path}` struct, or a "
        "path/URI to the file. Default: `audio_bytes` for `parquet`, `audio` for `hf_parquet`.",
    )
    manifest: Optional[str] = Field(
        None,
        description="For `folder`: a JSONL or CSV file with a `path` column (relative to the "
        "folder) and any other columns, such as a reference `text`, joined to the files by path. "
        "Default: `manifest.jsonl` or `manifest.csv` in the folder when present.",
    )
    manifest_path_column: str = Field("path", description="Manifest column naming each audio file.")
    extensions: list[str] = Field(
        [".flac", ".wav", ".mp3", ".ogg", ".opus", ".m4a", ".webm"],
        description="File extensions a folder source picks up (case-insensitive).",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("format")
    @classmethod
    def _registered_format(cls, value: str) -> str:
        return _one_of(SOURCE_FORMATS, value, also=("auto",))


class CustomFilter(Settings):
    """A filter of your own: a subclass of `audiocurate.filters.Filter` in any importable module."""

    type: str = Field(..., description="`package.module:Class` of the filter.")
    name: Optional[str] = Field(None, description="Its name in `filters.order` and in logs; default: the "
                                "class's `name`, else the class name.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the class's constructor.")


class SpeakingRateFilter(Settings):
    """Emilia's speaking-rate rule, in segmented runs: a segment whose characters per second lie
    outside its recording's inter-quartile fences (Q1 - k*IQR, Q3 + k*IQR) is rejected
    (`chars_per_s_outlier`): most often a missed or hallucinated stretch of text. The rate is over
    the words' span when Whisper gives word timestamps (`asr.word_timestamps`), else over the
    segment's duration. With `scope: recording` (or `column`) the fences are taken over every
    segment of the recording (or every row of the group), however many blocks and shards they
    were written in: while the run streams each row in play gets its rate (`speech_cps`), and a
    corpus pass after the streaming pass moves the curated rows outside their group's fences to
    `rejected/` (`docs/corpus.md`). A row a later gate (WER, the judge) rejected keeps that
    reason. `scope: block` judges in the stream instead, within one block: a recording whose
    segments run past a block's end (`segment.block_mb`: 32 MB, about 17 minutes of 16 kHz
    samples) is judged by parts."""

    enabled: bool = Field(True, description="Check every segmented recording's segments (no effect unless "
                          "`segment.enabled`), or with `scope: column` every group's rows.")
    scope: Literal["block", "recording", "column"] = Field(
        "recording", description="Whose rows the fences are taken over: `recording`, all segments of one "
        "recording (segmented runs), in a corpus pass; `column`, all rows sharing a value of `column` (e.g. "
        "Common Voice's `client_id`; segmented or not; a null value is no group and is not judged), in a "
        "corpus pass; `block`, a recording's segments within one Ray block, in the stream (the behaviour "
        "before corpus passes).")
    column: Optional[str] = Field(None, description="With `scope: column`: the input column whose values are "
                                  "the groups.")
    iqr_k: float = Field(1.5, gt=0, description="Fence distance in inter-quartile ranges (Tukey's 1.5). The range "
                         "counts as at least a tenth of the recording's median rate, so an even reader's segments "
                         "are not outliers by a character or two.")
    min_segments: int = Field(4, ge=4, description="Recordings (groups) with fewer rows still in play are not "
                              "checked: quartiles of two or three values mean nothing.")

    @model_validator(mode="after")
    def _column_named(self) -> "SpeakingRateFilter":
        if (self.scope == "column") != (self.column is not None):
            raise ValueError("filters.speaking_rate: `column` names the groups exactly when `scope: column` "
                             f"(scope {self.scope!r}, column {self.column!r})")
        return self


def _built_in_filter_sections() -> dict[str, Any]:
    """A section `filters.<name>` per built-in filter with settings of its own (`FILTERS`, in run
    order), typed by the settings class in the filter's module and described by its docstring."""
    sections: dict[str, Any] = {}
    for name in FILTERS.declared():
        # speaking_rate's settings are still defined in this module, which its module imports
        settings = SpeakingRateFilter if name == "speaking_rate" else FILTERS.get(name).settings
        if settings is not None:
            about = " ".join((settings.__doc__ or "").split())
            sections[name] = (settings, Field(default_factory=settings, description=about))
    return sections


FiltersConfig = create_model(
    "FiltersConfig",
    __base__=Settings,
    __module__=__name__,
    __doc__="""Every filter runs at the earliest stage whose columns cover what it needs: duration,
    silence, DNSMOS and the quality gates right after decoding, language, hallucination and WER
    right after Whisper, `min_score` (`select`) after the judge. Each built-in filter's section is
    defined beside the filter, in its module of `audiocurate.filters`.""",
    **_built_in_filter_sections(),
    custom=(list[CustomFilter], Field(
        default_factory=list, description="Your own filters, e.g. `[{type: \"my_filters:LoudEnough\", args: "
        "{min_dbfs: -30}}]`. Ray ships their code to the workers (pickled by value), so the module need "
        "only be importable where you start the run.",
    )),
    order=(Optional[list[str]], Field(
        None, description=f"Run order by name: built-ins {', '.join(f'`{n}`' for n in FILTERS.declared())} "
        "(their default order), and custom filters' names. Where two filters reject the same row, the first "
        "one's reason is recorded. None: built-ins in that order, then custom filters in list order.",
    )),
)


class SegmentConfig(Settings):
    """Long recordings into segments (`--profile longform`): Silero VAD finds speech, regions
    are packed into segments of `min_s`..`max_s` cut only in pauses, and each segment is a row
    of its own through transcription, filters, judge and selection (`id` = `<parent id>@<start>`,
    `parent_id`, `start_s`, `end_s` in the recording). A recording with no speech is one
    rejected row (`no_speech`)."""

    enabled: bool = Field(False, description="Cut recordings into segments.")
    min_s: float = Field(2.0, gt=0, description="Segments shorter than this are joined to a neighbour when they fit.")
    max_s: float = Field(30.0, gt=0, description="Longest segment, padding included (Whisper reads 30 s at a "
                         "time). A single stretch of speech longer than this stays whole; VAD splits it first.")
    target_s: float = Field(
        20.0, ge=0, description="Preferred shortest segment (above `max_s`: none is preferred, the longest pause "
        "wins): a pause that would end a segment before this counts "
        "half when choosing where to cut, so segments run long (Whisper transcribes long ones better) yet still end "
        "at a sentence's longer pause. On the dev set of `benchmarks/longform.py` (tiny.en): 0 of 112 sentences cut "
        "inside, and the joined segments' WER went from 0.03 above the whole recordings' to 0.005 below.")
    pad_s: float = Field(0.5, ge=0, description="Silence kept on each side of a segment (at most half the pause).")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero VAD speech probability threshold.")
    min_silence_s: float = Field(0.3, gt=0, description="A pause at least this long may separate segments.")
    vad_window_s: float = Field(
        120.0, ge=30, description="VAD runs window by window as the samples stream in, so its memory follows the "
        "window (120 s: about 50 MB), not the recording; windows overlap by 10 s and are joined mid-overlap, where "
        "both have context (Silero starts each window afresh).")
    spool_mb: float = Field(
        32.0, gt=0, json_schema_extra=SPEED_ONLY, description="A recording's decoded 16 kHz samples wait to be cut "
        "in memory up to this size (32 MB: about 17 minutes), beyond it in a temporary file, so decoding and "
        "cutting a recording of any length holds this, the VAD window and the segments in hand, never the "
        "whole recording's samples.")
    block_mb: float = Field(
        32.0, gt=0, description="Most MB of segment samples (16 kHz, 16 bit: 32 MB is about 17 minutes) in one Ray "
        "Data block from the segment stage on. Every process that handles a block holds it, and some hold a copy "
        "or two while they work, so this bounds each worker's memory. A recording's segments travel in one block "
        "when they fit, and `filters.speaking_rate` draws its fences from the segments of one recording in one "
        "block (a recording longer than a block: from each block's share of it).")
    in_flight_mb: float = Field(
        512.0, gt=0, json_schema_extra=SPEED_ONLY, description="Most object-store memory, per node, the run's "
        "blocks in flight may take (Ray Data's `resource_limits.object_store_memory`, this times the nodes at "
        "start); the stages ahead wait when it is reached. A guard for inputs of many recordings, whose segments "
        "are cut far faster than Whisper transcribes them; on one recording of 1-2 h it changed nothing "
        "measurable (`block_mb` is what bounds a run's memory there). At least four blocks (4 x `block_mb`).")

    @model_validator(mode="after")
    def _lengths_fit(self) -> "SegmentConfig":
        if not (self.min_s < self.max_s and 2 * self.pad_s < self.max_s):
            raise ValueError(f"segment lengths do not fit: need min_s ({self.min_s}) < max_s ({self.max_s}) "
                             f"and 2 x pad_s ({self.pad_s}) < max_s")
        if self.in_flight_mb < 4 * self.block_mb:  # a block a stage, or the stages wait on each other
            raise ValueError(f"segment.in_flight_mb ({self.in_flight_mb:g}) must hold at least four blocks "
                             f"(4 x segment.block_mb = {4 * self.block_mb:g})")
        return self


class DecodeConfig(Settings):
    class Resources(StageResources):
        """Decode's Ray resources: it runs as CPU tasks, so a pool is a number of tasks, not actors."""

        num_cpus: float = Field(0.08, ge=0, description="CPUs Ray reserves per decode task (fractions allowed).")
        concurrency: Union[int, Literal["auto"]] = Field(
            "auto", description="Decode tasks at most at once: `auto` is one per CPU of the cluster, an int a "
            "fixed number (tasks have no `[min, max]`: Ray Data starts them as blocks arrive).")
        batch_size: Optional[int] = Field(
            None, ge=1, description="Rows per decode call. None: each read block (`read_block_mb`, sized by "
            "bytes) in one call, the unit of work from there on. A number makes Ray Data cut blocks into, or "
            "bundle them up to, calls of that many rows; the rows that settle while decoding are written once "
            "per call.")

    sample_rate: Literal[16000] = Field(16000, description="Whisper's rate; every clip is resampled to it, mono.")
    max_source_sample_rate: int = Field(
        384_000, description="Headers declaring a higher rate are corrupt, not audio (`error`)."
    )
    min_source_sample_rate: int = Field(1_000, description="Headers declaring a lower rate are corrupt.")
    truncation_tolerance_s: float = Field(
        0.05, description="A stream that decodes shorter than its header declares by more than "
        "this is reported as truncated instead of being used as if whole.",
    )
    max_duration_s: Optional[float] = Field(
        4 * 3600.0, gt=0, description="A clip longer than this is rejected (`too_long`) before its samples "
        "are kept: at once where its header declares a length the file holds (FLAC, WAV, AIFF), else as soon as "
        "decoding passes it (its `duration_s` then stays empty). A kept clip is decoded and transcribed whole, so "
        "this bounds the memory a decode task and a Whisper actor need for one clip (4 h: 460 MB of 16 kHz "
        "samples). Not applied when segmenting (`--profile longform`), which cuts a recording of any length as "
        "it decodes. None: no limit.",
    )
    read_block_mb: float = Field(
        8.0, gt=0, json_schema_extra=SPEED_ONLY, description="Parquet input is decoded in blocks "
        "of about this many MB of encoded audio (rows estimated from the first file's bytes per "
        "row; 8 MB is about 200 Common Voice clips), one decode task each, spread over all cores. "
        "Rows that fail or are rejected while decoding are written there and then; the rest go "
        "on to the model stages in blocks of `asr.resources.batch_size` clips (segmented runs: of the "
        "segments of the recordings read together).",
    )
    resources: Resources = Field(
        default_factory=lambda: DecodeConfig.Resources(),
        description="Decode runs as CPU tasks, by default one per block (`read_block_mb`), a task per core at "
        "most. `num_gpus` is not used. `num_cpus` is each task's reservation: "
        "Ray Data reserves each operator about half the cluster's CPUs over the number of operators "
        "(2 CPUs, 6 operators: 0.17) and hands the unreserved rest to the stages after decode, so "
        "0.08 lets decode run a task per core within its own share; 0.25 ran one task at a time on "
        "2 cores.",
    )


class SelectConfig(Settings):
    min_score: int = Field(3, ge=1, le=5, description="Keep clips whose `edu_score` is at least this.")


class DedupConfig(Settings):
    """Near-duplicate recordings across the whole input (`audiocurate.corpus.dedup`). While the run
    streams, every decoded clip gets a `fingerprint` column (landmark hashes summarised by MinHash,
    4 ms of one core per second of audio); once every row is written, a corpus pass groups the
    curated rows whose fingerprints agree, keeps one per group and moves the others to `rejected/`
    with `drop_reason: duplicate` and `duplicate_of: <kept id>`. Found: the same decoded audio in
    any container, re-encodes (MP3 at 64 kbit/s), gain changes of +-6 dB, trims of up to 100 ms at
    either end. Not grouped: the same sentence read by another voice (`benchmarks/dedup_dev.py`)."""

    enabled: bool = Field(False, description="Fingerprint every clip and drop near-duplicates of curated clips "
                          "after the run (on in `--profile quality`).")
    min_similarity: float = Field(
        0.2, gt=0, le=1, description="Two clips are one recording when at least this fraction of their "
        "fingerprints' MinHash values agree (an estimate of the Jaccard similarity of their landmark sets). "
        "Measured on the dev set: copies 0.39 and up, the same sentence by another espeak-ng voice 0.07 at most.")
    keep: list[str] = Field(
        ["edu_score", "dnsmos_ovrl", "duration_s"], description="Which copy of a group stays: the highest value "
        "of the first of these columns, ties broken by the next (a null counts as lowest), then the smallest id. "
        "Columns the output lacks are skipped.")
    max_bucket: int = Field(
        64, ge=2, description="A band bucket with more rows than this (many "
        "copies of one clip) pairs each row with the bucket's best row only, instead of every pair: the group "
        "is still found when its copies agree with its best one.")


class MaxHoursPer(Settings):
    column: str = Field(..., description="The column whose values are the groups, e.g. Common Voice's `client_id`.")
    hours: float = Field(..., gt=0, description="Most hours of curated audio kept per group.")


class CorpusConfig(Settings):
    """Decisions over the whole output, taken after every row is written (corpus passes, run in Ray)."""

    max_hours_per: Optional[MaxHoursPer] = Field(
        None, description="Cap each group's curated hours: a group's clips are kept best first (`dedup.keep`'s "
        "order, then smallest id) while its total stays under the cap; the rest are moved to `rejected/` with "
        "`drop_reason: over_cap`. None: no cap.")


class OutputConfig(Settings):
    audio_format: Literal["flac16k", "original"] = Field(
        "flac16k", description="Audio kept in `curated/`: the 16 kHz mono clip as FLAC, or the "
        "source's own bytes. Either way in an `audio` struct `{bytes, path}` that Hugging Face "
        "`datasets` reads as an Audio feature."
    )
    storage: StorageConfig = Field(default_factory=StorageConfig)
    rows_per_shard: int = Field(
        64, ge=1, json_schema_extra=SPEED_ONLY, description="Rows gathered before a shard is written. Smaller shards mean "
        "less work redone after a crash (finished shards are never redone); larger ones, fewer files.",
    )
    compact_mb: Optional[float] = Field(
        256.0, gt=0, json_schema_extra=SPEED_ONLY,
        description="At the end of each run, merge each output's shards into files of about this "
        "many MB (`audiocurate compact`, one Ray task per merged file): small shards while the run is in flight "
        "(a crash costs one), few large files once it is done. None: leave the shards as written.")
    report_samples: int = Field(6, ge=0, json_schema_extra=SPEED_ONLY, description="Sample rows per outcome "
                                "(curated, each drop reason, each error stage) in report.html, picked by a hash of "
                                "the id, so a rerun shows the same rows.")
    report_clips: int = Field(3, ge=0, json_schema_extra=SPEED_ONLY, description="Of those, how many get an "
                              "audio player: the first 8 s as Opus at 24 kb/s, about 24 KB each, so the page stays "
                              "under 2 MB (16 outcomes at most). Rejected and error rows' clips are read back "
                              "from the input.")
    formats: list[str] = Field(
        default_factory=list, json_schema_extra=SPEED_ONLY, description="Exports written at the end of a run, "
        "each to `OUTPUT/exports/<format>/`, as `audiocurate export` writes them (resumable: every curated "
        "clip once): `nemo`, `webdataset`, `lhotse`, `hf`, or any format registered in `exports.EXPORT_FORMATS`. "
        "`lhotse` needs the `lhotse` package.")
    export_shard_size: int = Field(1000, ge=1, json_schema_extra=SPEED_ONLY,
                                   description="Clips per tar shard of the `webdataset` export.")

    @field_validator("formats")
    @classmethod
    def _registered_formats(cls, value: list[str]) -> list[str]:
        return [_one_of(EXPORT_FORMATS, f) for f in value]


class RayConfig(Settings):
    model_config = SPEED_ONLY_SECTION

    address: Optional[str] = Field(
        None, description="Cluster to join (`auto`, `ray://host:10001`, `host:6379`); None starts "
        "Ray locally unless RAY_ADDRESS is set."
    )
    num_cpus: Optional[int] = Field(None, description="Local Ray only: CPUs to use; None is all.")
    max_errored_blocks: int = Field(
        0, description="Ray Data `max_errored_blocks`: blocks allowed to fail as a whole before "
        "the run stops. Row errors never count here: they become error rows. 0 is exact: any "
        "lost block stops the run, and a rerun resumes it."
    )
    actor_max_restarts: int = Field(
        3, ge=0, description="Times Ray restarts a dead model actor. An engine that dies more "
        "often stops the run with its error instead of hanging."
    )
    actor_max_task_retries: int = Field(3, ge=0, description="Retries of a batch on a restarted actor.")
    task_max_retries: int = Field(3, ge=0, description="Retries of a CPU task whose worker died.")
    # Logical CPU reservations of the stages and jobs that are not a model: Ray schedules by
    # them, they never limit threads. Model stages and decode take theirs from `resources`.
    row_task_cpus: float = Field(
        0.25, gt=0, description="CPUs each task of a stage that only moves rows reserves: the split into model "
        "blocks, select and package (one fused task), the write to the outputs, resume's drops of written "
        "segments, the `none` ASR and judge backends and a processor judge's result stage. A whole CPU "
        "(Ray's default) each would leave them waiting beside model actors on a small machine.")
    id_filter_cpus: float = Field(
        0.05, gt=0, description="CPUs of the one actor that drops finished rows by id on resume (and keeps "
        "`--limit`'s rows) for inputs that are not Parquet: it holds the id set, and mostly waits.")
    task_headroom_cpus: float = Field(
        1.25, ge=0, description="CPUs kept out of the model actors' reservations for the read and decode tasks "
        "(Ray Data's listing task takes a whole CPU): where the actors' pools would reserve more than the "
        "cluster's CPUs less this, every actor's `num_cpus` is scaled down to fit (2 CPUs: to 0.75 in all), "
        "so the tasks that feed them can always start. Logical only: the actors' threads are unchanged.")
    merge_task_cpus: float = Field(
        0.25, gt=0, description="CPUs each task merging small shards (`output.compact_mb`, `compact`) reserves.")
    id_check_task_cpus: float = Field(
        0.25, gt=0, description="CPUs each task of the duplicate-id check (`source.check_duplicate_ids`) "
        "reserves: one reads a file's id column, one counts a bucket of ids.")
    export_task_cpus: float = Field(
        0.5, gt=0, description="CPUs each export task (`output.formats`, `export`) reserves: one per shard, "
        "reading it and writing the format's files.")
    engine_fault_retries: int = Field(
        2, ge=0, description="Times a model stage runs a batch again when its engine, not a row, failed it: an "
        "exception of a fatal kind (out of memory, a CUDA error, a refused or timed-out connection, an engine "
        "that died) or every row of a batch of two or more failing alone with the same error. Each try waits "
        "`engine_fault_backoff_s` (doubling) and loads the engine anew. A fault that outlasts them stops the "
        "run with the stage and engine named, and none of the batch's rows is written as an error row, so a "
        "rerun resumes them. The tries happen inside the actor: Ray Data retries an actor's exception only "
        "with `DataContext.actor_task_retry_on_errors`, on the same actor, at once, and counted against "
        "`actor_max_task_retries`.")
    engine_fault_backoff_s: float = Field(
        2.0, ge=0, description="Seconds before the first try again after an engine fault; doubled for each "
        "next one (2, 4, 8...).")
    progress: bool = Field(True, description="Show Ray Data's progress bars.")
    probe_engines: bool = Field(
        True, description="Before the run, load each native engine (faster-whisper, llama.cpp) "
        "in a subprocess on every node and run it on one row, so an engine that cannot run on a "
        "machine is named with its signal in seconds, not after Ray restarts its actors. Passing "
        "probes are cached per node and engine version (`~/.cache/audiocurate/probes`).",
    )
    probe_timeout_s: float = Field(300.0, gt=0, description="Longest a probe may take on one node.")
    forward_env: list[str] = Field(
        default_factory=list, description="Names of the driver's environment variables to hand to every worker "
        "when audiocurate joins Ray (through Ray's runtime_env) or starts it (a local Ray's processes "
        "inherit the driver's environment, these included), e.g. `[AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN]` for workers with no credentials or role of their own. Only "
        "the names are configuration: values are never written to the config, the output or a pickled stage "
        "(Ray's runtime-env agent does log them on each node, in `runtime_env_agent.log`).")
    env_vars: dict[str, str] = Field(
        default_factory=lambda: {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
        description="Environment of every worker. One OpenMP thread per process is fastest "
        "when processes share cores. Joining a cluster, they go through Ray's runtime_env; a "
        "local Ray that audiocurate starts gets them in the environment it starts in (the "
        "driver's own is restored after), so its tasks can use the workers Ray starts with the "
        "node instead of waiting for new ones.",
    )


class BackendSection:
    """The type of a section whose fields depend on its `backend` (`asr`, `judge`): validated
    into the config class the backend registered (`Registry.config_of`), dumped with that class's
    fields, and described in the JSON schema as one of the registered classes. Read from the
    registry at validation time, so a backend registered after this module was imported is taken."""

    def __init__(self, registry: Registry[Any], default: str):
        self.registry = registry
        self.default = default

    def section_class(self, value: Any) -> type[Settings]:
        backend = (value.get("backend", self.default) if isinstance(value, dict)
                   else getattr(value, "backend", self.default))
        return self.registry.config_of(_one_of(self.registry, backend))

    def validate(self, value: Any) -> Settings:
        if isinstance(value, BaseModel):
            section = self.section_class(value)
            return value if isinstance(value, section) else section.model_validate(value.model_dump())
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping of {self.registry.kind} settings, got {type(value).__name__}")
        return self.section_class(value).model_validate(value)

    def classes(self) -> dict[str, type[Settings]]:
        return {name: self.registry.config_of(name) for name in self.registry.declared()}

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self.validate, serialization=core_schema.plain_serializer_function_ser_schema(
                _dump_section, info_arg=True))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        return handler(core_schema.union_schema([cls.__pydantic_core_schema__ for cls in self.classes().values()]))


def _dump_section(section: BaseModel, info: core_schema.SerializationInfo) -> Any:
    return section.model_dump(mode=info.mode, include=info.include, exclude=info.exclude, by_alias=info.by_alias,
                              exclude_unset=info.exclude_unset, exclude_defaults=info.exclude_defaults,
                              exclude_none=info.exclude_none, round_trip=info.round_trip)


ASR_SECTION = BackendSection(ASR_BACKENDS, default="faster_whisper")
JUDGE_SECTION = BackendSection(JUDGE_BACKENDS, default="llama_cpp")
AsrConfig = Annotated[Settings, ASR_SECTION]
JudgeConfig = Annotated[Settings, JUDGE_SECTION]


class _RegisteredConfigs(Mapping):
    """A section's config classes by backend name, as the registry holds them now (the
    default backend first)."""

    def __init__(self, section: BackendSection):
        self.section = section

    def __getitem__(self, name: str) -> type[Settings]:
        if name not in self.section.registry:
            raise KeyError(name)
        return self.section.registry.config_of(name)

    def __iter__(self) -> Iterator[str]:
        names = self.section.registry.declared()
        return iter([self.section.default, *(n for n in names if n != self.section.default)])

    def __len__(self) -> int:
        return len(self.section.registry.declared())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.section.registry


# The sections whose fields depend on `backend`, and each backend's class.
BACKEND_SECTIONS: dict[str, Mapping[str, type[Settings]]] = {
    "asr": _RegisteredConfigs(ASR_SECTION), "judge": _RegisteredConfigs(JUDGE_SECTION)}


_FINGERPRINT_FILTER = "audiocurate.corpus.fingerprint:AudioFingerprint"


class PipelineConfig(Settings):
    source: SourceConfig = Field(default_factory=SourceConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    asr: AsrConfig = Field(default_factory=lambda: ASR_SECTION.validate({}), description="Speech recognition; "
                           "the fields depend on `backend` (`faster_whisper`, `transformers`, `none` with "
                           "`text_column`: judge transcripts the input has, or any backend registered in "
                           "`asr.ASR_BACKENDS`).")
    judge: JudgeConfig = Field(default_factory=lambda: JUDGE_SECTION.validate({}), description="The "
                               "educational-value judge; the fields depend on `backend` (`llama_cpp`, `transformers`, "
                               "`vllm`, `http`, `none`: keep every transcribed row the filters pass, unscored, or any "
                               "backend registered in `judge.backends.JUDGE_BACKENDS`).")
    select: SelectConfig = Field(default_factory=SelectConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _forward_the_judges_token(self) -> "PipelineConfig":
        """The HTTP judge's `api_key_env` is one of the variables every worker gets
        (`ray.forward_env`): its requests are sent there, with the token read there."""
        name = getattr(self.judge, "api_key_env", None)
        if name and name not in self.ray.forward_env:
            self.ray.forward_env = [*self.ray.forward_env, name]
        return self

    @model_validator(mode="after")
    def _fingerprint_when_deduplicating(self) -> "PipelineConfig":
        """`dedup.enabled` needs a `fingerprint` column in every row: its measuring filter joins
        `filters.custom` (placed right after decoding, as any filter reading the samples)."""
        if self.dedup.enabled and not any(c.type == _FINGERPRINT_FILTER for c in self.filters.custom):
            self.filters.custom = [*self.filters.custom, CustomFilter(type=_FINGERPRINT_FILTER)]
        return self

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "PipelineConfig":
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        profile: str | list[str] | None = None,
        overrides: list[str] | dict[str, Any] | None = None,
        base: Optional[dict[str, Any]] = None,
    ) -> "PipelineConfig":
        """Profiles (in order: `longform,quality`), then YAML file, then overrides: each layer
        updates the one before. `base`: a configuration they all update (`refilter` starts
        from the run's recorded one)."""
        data: dict[str, Any] = dict(base or {})
        names = [p for p in profile.split(",") if p.strip()] if isinstance(profile, str) else list(profile or [])
        for name in names:
            data = _merge_layer(data, load_profile(name.strip()))
        if path:
            data = _merge_layer(data, yaml.safe_load(Path(path).read_text()) or {})
        if overrides:
            items = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides)
            for key, value in items:
                section, _, field = key.partition(".")
                if field == "backend":
                    _keep_fields_of(data, section, value)
                _set_dotted(data, key, value)
        return cls.model_validate(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    # ---- identity of a result ------------------------------------------------------------
    def result_fingerprint(self) -> dict[str, Any]:
        """The settings that change what a row's result is: every field not marked SPEED_ONLY
        (resources, threads, devices, servers' addresses, shard sizes, Ray). Changing one of
        these on an existing output is refused; the others may change on a resumed run.
        A model section's precision is in it resolved (`resolved_precision`): `device` is
        speed only, but `compute_type: default` on a GPU is not the same numbers as on a CPU."""
        out = _result_settings(self)
        for section in ("asr", "judge"):
            resolve = getattr(getattr(self, section), "resolved_precision", None)
            if resolve is not None:
                out[section]["resolved_precision"] = resolve()
        return out

    def fingerprint_hash(self, engines: Optional[dict[str, Any]] = None) -> str:
        """Hash of the result settings and, when given, the engines' installed versions."""
        blob = json.dumps({"config": self.result_fingerprint(), "engines": engines or {}}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _result_settings(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if not changes_results(field) or not in_identity(field, value):
            continue
        out[name] = _result_settings(value) if isinstance(value, BaseModel) else model.model_dump(
            mode="json", include={name})[name]
    return out


def load_profile(name: str) -> dict[str, Any]:
    """A named configuration profile shipped with the package, or a YAML path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return yaml.safe_load(p.read_text()) or {}
    ref = resources.files("audiocurate") / "profiles" / f"{name}.yaml"
    if not ref.is_file():
        shipped = sorted(x.name[:-5] for x in (resources.files("audiocurate") / "profiles").iterdir()
                         if x.name.endswith(".yaml"))
        raise ValueError(f"unknown profile {name!r}; shipped profiles: {', '.join(shipped)}")
    return yaml.safe_load(ref.read_text()) or {}


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. asr.beam_size=5)")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _merge_layer(data: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `data`. A layer that switches a section's backend starts that section
    from the fields the new backend has: a profile's `judge.threads` (llama.cpp) does not
    follow a switch to `judge.backend: http`, which has no such field."""
    for section in BACKEND_SECTIONS:
        given = layer.get(section)
        if isinstance(given, dict) and "backend" in given:
            _keep_fields_of(data, section, given["backend"])
    return _deep_merge(data, layer)


def _keep_fields_of(data: dict[str, Any], section: str, backend: Any) -> None:
    classes = BACKEND_SECTIONS.get(section)
    current = data.get(section)
    if not classes or not isinstance(current, dict) or backend not in classes:
        return
    if current.get("backend", next(iter(classes))) != backend:
        fields = classes[backend].model_fields
        data[section] = {k: v for k, v in current.items() if k in fields}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
