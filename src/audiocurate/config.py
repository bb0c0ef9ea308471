"""Pipeline configuration: pydantic models whose field descriptions are the reference manual.

A config is data. It loads from YAML (`PipelineConfig.from_yaml`), can start from a named
profile shipped with the package (`default`, `gpu`), and takes dotted overrides from the
command line (`asr.beam_size=5`). Everything a stage needs (model, batch size, resources)
comes from here, never from constants at the call site.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from .asr.existing import ExistingTranscriptConfig
from .asr.faster_whisper import FasterWhisperConfig
from .asr.transformers import TransformersAsrConfig
from .core.settings import SPEED_ONLY, SPEED_ONLY_SECTION, Settings, StageResources, changes_results
from .judge.llama_cpp import LlamaCppJudgeConfig
from .judge.none import NoJudgeConfig
from .judge.processors import HttpJudgeConfig, VllmJudgeConfig
from .judge.transformers import TransformersJudgeConfig

__all__ = ["AsrConfig", "JudgeConfig", "PipelineConfig", "SPEED_ONLY", "StageResources", "changes_results",
           "FasterWhisperConfig", "TransformersAsrConfig", "LlamaCppJudgeConfig", "TransformersJudgeConfig",
           "VllmJudgeConfig", "HttpJudgeConfig", "ExistingTranscriptConfig", "NoJudgeConfig"]


def _backend_or(default: str) -> Callable[[Any], str]:
    """The `backend` of a section given as a dict or a model; `default` when it names none."""
    def backend(value: Any) -> str:
        if isinstance(value, dict):
            return value.get("backend", default)
        return getattr(value, "backend", default)

    return backend


class StorageConfig(Settings):
    """How to reach object storage (`s3://`, `gs://`). Credentials come from the usual
    environment variables or instance metadata, never from this file."""

    model_config = SPEED_ONLY_SECTION

    endpoint_url: Optional[str] = Field(
        None,
        description="Custom endpoint: S3-compatible (e.g. `http://127.0.0.1:9000` for MinIO) or "
        "GCS-compatible (an emulator). The scheme of the URL (http/https) is used for the connection.",
    )
    anonymous: bool = Field(False, description="Access public buckets without credentials.")
    region: Optional[str] = Field(None, description="Bucket region; None lets the client resolve it.")


class SourceConfig(Settings):
    """Where the audio comes from and how its rows are laid out."""

    format: Literal["auto", "parquet", "hf_parquet", "folder"] = Field(
        "auto",
        description="`parquet`: one row per clip with encoded audio bytes in `audio_column` "
        "(Ray's Common Voice copy: `id`, `audio_bytes`). `hf_parquet`: Hugging Face `datasets` "
        "layout, an `audio` struct of `bytes` and `path`. `folder`: audio files found "
        "recursively, optionally joined with a manifest. `auto` picks `folder` for a directory "
        "holding audio files, and for Parquet looks at the audio column's type.",
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


class DurationFilter(Settings):
    enabled: bool = True
    min_s: float = Field(0.3, ge=0, description="Clips shorter than this are rejected (`too_short`).")
    max_s: Optional[float] = Field(
        None, description="Clips longer than this are rejected (`too_long`); None keeps any length."
    )


class SilenceFilter(Settings):
    enabled: bool = True
    max_peak_dbfs: float = Field(
        -45.0,
        description="A clip whose loudest sample stays below this level (dB full scale) is "
        "digital silence or near-silence and is rejected (`silence`) before transcription.",
    )


class HallucinationFilter(Settings):
    """Whisper's own failure signs, checked on the transcript before the judge sees it."""

    enabled: bool = True
    max_compression_ratio: float = Field(
        2.4, description="gzip compression ratio of the transcript above which it is repetitive "
        "gibberish (`repetitive_transcript`); 2.4 is Whisper's own threshold.",
    )
    no_speech_prob: float = Field(
        0.6, description="With `avg_logprob` below `no_speech_logprob`, a no-speech probability "
        "above this marks a clip with no speech (`no_speech`), as Whisper decides.",
    )
    no_speech_logprob: float = Field(-1.0, description="See `no_speech_prob`.")
    max_ngram_repeats: int = Field(
        4, ge=2, description="Any 1- to 3-word sequence repeated back to back more than this many "
        "times is a decoding loop (`repeated_ngrams`).",
    )
    min_chars_per_s: float = Field(
        1.0, ge=0, description="Fewer transcript characters per second of audio than this means "
        "most speech was missed (`too_few_chars_per_s`). Ignored for clips under 2 s.",
    )
    max_chars_per_s: float = Field(
        40.0, description="More characters per second than anyone speaks means invented text "
        "(`too_many_chars_per_s`).",
    )
    drop_empty: bool = Field(True, description="Reject clips whose transcript is empty (`empty_transcript`).")
    min_unique_word_ratio: Optional[float] = Field(
        None, ge=0, le=1, description="Granary's rule for loops the n-gram check misses: in a transcript of 10 "
        "words or more, distinct words / words below this is a loop (`low_unique_words`). None: off (0.3 in "
        "`--profile longform`).")
    max_word_chars: Optional[int] = Field(
        None, ge=10, description="A 'word' longer than this many characters is decoding garbage (`long_word`). "
        "None: off (40 in `--profile longform`).")


class WerFilter(Settings):
    reference_column: Optional[str] = Field(
        "sentence",
        description="Column with a reference transcript (Common Voice `sentence`, a manifest "
        "`text`). When present, a `wer` column is written; when absent, nothing happens.",
    )
    max_wer: Optional[float] = Field(
        None, ge=0, description="Reject clips whose WER against the reference exceeds this "
        "(`wer_above_max`); None only measures.",
    )
    normalizer: Literal["whisper_english", "basic"] = Field(
        "whisper_english", description="How both texts are normalized before comparing: "
        "`whisper_english` (Whisper's English normalizer: case, punctuation, numbers, spelling) "
        "or `basic` (lowercase, no punctuation; use it for other languages).",
    )


class CustomFilter(Settings):
    """A filter of your own: a subclass of `audiocurate.filters.Filter` in any importable module."""

    type: str = Field(..., description="`package.module:Class` of the filter.")
    name: Optional[str] = Field(None, description="Its name in `filters.order` and in logs; default: the "
                                "class's `name`, else the class name.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the class's constructor.")


class LanguageFilter(Settings):
    """Speech the model cannot understand, caught before the judge. With a multilingual model
    (`asr.language: null`) or a language ID model beside an English-only one
    (`asr.language_id_model`), Whisper's detected language and its probability; with an
    English-only one (tiny.en), speech in another language comes out as fluent English
    nonsense that only Whisper's own confidence gives away (`min_avg_logprob`)."""

    allowed: Optional[list[str]] = Field(None, description="Languages kept (Whisper's codes: `en`, `de`...); "
                                         "others are rejected (`language`). None: `asr.language` when "
                                         "`asr.language_id_model` hears the language beside it (the English "
                                         "default keeps English only), else any.")
    min_prob: float = Field(0.6, ge=0, le=1, description="With spoken language ID (`asr.language: null`, or "
                            "`asr.language_id_model` beside a fixed `asr.language`): reject clips whose detected "
                            "language has a lower probability (`language`). Granary uses 0.7, Emilia 0.8 (large "
                            "models); 0.6 was set on the dev half of benchmarks/language_id.py with whisper-base. 0: off.")
    min_avg_logprob: Optional[float] = Field(
        None, le=0, description="Reject transcripts whose mean token log-probability is below this "
        "(`low_confidence`). Measured on tiny.en (`benchmarks/language_gate.py`): -0.9 keeps all 18 real "
        "English recordings and 88% of 60 espeak-ng English clips, and lets through 8% of Czech, 17% of "
        "Dutch and 17% of German espeak-ng clips (12 each); -0.9 in `--profile longform`. None: off.")


class SpeakingRateFilter(Settings):
    """Emilia's speaking-rate rule, in segmented runs: a segment whose characters per second lie
    outside its recording's inter-quartile fences (Q1 - k*IQR, Q3 + k*IQR) is rejected
    (`chars_per_s_outlier`): most often a missed or hallucinated stretch of text. The rate is over
    the words' span when Whisper gives word timestamps (`asr.word_timestamps`), else over the
    segment's duration. A recording's segments are judged together, in its block; a recording
    whose segments run past a block's end (`segment.block_mb`: 32 MB, about 17 minutes of
    16 kHz samples) is judged by parts.
    On resume, the segments already written of a recording cut off mid-write are transcribed
    again for its fences, and not written again."""

    enabled: bool = Field(True, description="Check every segmented recording's segments (no effect unless "
                          "`segment.enabled`).")
    iqr_k: float = Field(1.5, gt=0, description="Fence distance in inter-quartile ranges (Tukey's 1.5). The range "
                         "counts as at least a tenth of the recording's median rate, so an even reader's segments "
                         "are not outliers by a character or two.")
    min_segments: int = Field(4, ge=4, description="Recordings with fewer segments still in play are not checked: "
                              "quartiles of two or three values mean nothing.")


class DnsmosFilter(Settings):
    """DNSMOS P.835 (Microsoft's no-reference speech quality model, ONNX on CPU): SIG (speech),
    BAK (background) and OVRL (overall) on a 1-5 scale, written as `dnsmos_sig`, `dnsmos_bak`,
    `dnsmos_ovrl` right after decoding. Measured here: clean espeak-ng speech OVRL about 3.0,
    the same with white noise at 10 dB SNR 1.9, at 0 dB 1.6 (`benchmarks/dnsmos.py`). Emilia
    keeps OVRL >= 3.0 on real speech; that gate would reject much clean synthetic speech, so
    gating is a choice you make (`min_ovrl`), measuring is on in the `longform` profile."""

    enabled: bool = Field(False, description="Measure DNSMOS for every decoded clip or segment: about 0.36 s "
                          "of one core per 9 s of audio (4% of real time), in the decode or segment tasks.")
    min_ovrl: Optional[float] = Field(None, ge=1, le=5, description="Reject clips whose OVRL is below this "
                                      "(`low_dnsmos`); None only measures.")
    model: str = Field("embedded:dnsmos-p835", description="The P.835 `sig_bak_ovr.onnx`; embedded: from `speechmos`.")


class FiltersConfig(Settings):
    """Every filter runs at the earliest stage whose columns cover what it needs: duration and
    silence right after decoding, hallucination and WER right after Whisper, `min_score`
    (`select`) after the judge."""

    duration: DurationFilter = Field(default_factory=DurationFilter)
    silence: SilenceFilter = Field(default_factory=SilenceFilter)
    hallucination: HallucinationFilter = Field(default_factory=HallucinationFilter)
    wer: WerFilter = Field(default_factory=WerFilter)
    dnsmos: DnsmosFilter = Field(default_factory=DnsmosFilter)
    language: LanguageFilter = Field(default_factory=LanguageFilter)
    speaking_rate: SpeakingRateFilter = Field(default_factory=SpeakingRateFilter)
    custom: list[CustomFilter] = Field(
        default_factory=list, description="Your own filters, e.g. `[{type: \"my_filters:LoudEnough\", args: "
        "{min_dbfs: -30}}]`. Ray ships their code to the workers (pickled by value), so the module need "
        "only be importable where you start the run.",
    )
    order: Optional[list[str]] = Field(
        None, description="Run order by name: built-ins `duration`, `silence`, `dnsmos`, `language`, "
        "`hallucination`, `speaking_rate`, `wer`, `min_score` (their default order), and custom filters' names. Where two filters reject the same row, the first one's "
        "reason is recorded. None: built-ins in that order, then custom filters in list order.",
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
    resources: StageResources = Field(
        default_factory=lambda: StageResources(num_cpus=0.08, batch_size=8),
        description="Decode runs as CPU tasks (`concurrency` and `batch_size` are not used), one "
        "per block (`read_block_mb`), a task per core at most. `num_cpus` is each task's reservation: "
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
    formats: list[Literal["nemo", "webdataset", "lhotse", "hf"]] = Field(
        default_factory=list, json_schema_extra=SPEED_ONLY, description="Exports written at the end of a run, "
        "each to `OUTPUT/exports/<format>/`, as `audiocurate export` writes them (resumable: every curated "
        "clip once). `lhotse` needs the `lhotse` package.")
    export_shard_size: int = Field(1000, ge=1, json_schema_extra=SPEED_ONLY,
                                   description="Clips per tar shard of the `webdataset` export.")


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


AsrConfig = Annotated[
    Union[Annotated[FasterWhisperConfig, Tag("faster_whisper")], Annotated[TransformersAsrConfig, Tag("transformers")],
          Annotated[ExistingTranscriptConfig, Tag("none")]],
    Discriminator(_backend_or("faster_whisper")),
]
JudgeConfig = Annotated[
    Union[Annotated[LlamaCppJudgeConfig, Tag("llama_cpp")], Annotated[TransformersJudgeConfig, Tag("transformers")],
          Annotated[VllmJudgeConfig, Tag("vllm")], Annotated[HttpJudgeConfig, Tag("http")],
          Annotated[NoJudgeConfig, Tag("none")]],
    Discriminator(_backend_or("llama_cpp")),
]
# The sections whose fields depend on `backend`, and each backend's class.
BACKEND_SECTIONS: dict[str, dict[str, type[Settings]]] = {
    "asr": {"faster_whisper": FasterWhisperConfig, "transformers": TransformersAsrConfig,
            "none": ExistingTranscriptConfig},
    "judge": {"llama_cpp": LlamaCppJudgeConfig, "transformers": TransformersJudgeConfig, "vllm": VllmJudgeConfig,
              "http": HttpJudgeConfig, "none": NoJudgeConfig},
}


_FINGERPRINT_FILTER = "audiocurate.corpus.fingerprint:AudioFingerprint"


class PipelineConfig(Settings):
    source: SourceConfig = Field(default_factory=SourceConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    asr: AsrConfig = Field(default_factory=FasterWhisperConfig, description="Speech recognition; the fields "
                           "depend on `backend` (`faster_whisper`, `transformers`, or `none` "
                           "with `text_column`: judge transcripts the input has).")
    judge: JudgeConfig = Field(default_factory=LlamaCppJudgeConfig, description="The educational-value "
                               "judge; the fields depend on `backend` (`llama_cpp`, `transformers`, `vllm`, `http`, or `none`: "
                               "keep every transcribed row the filters pass, unscored).")
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
        if not changes_results(field):
            continue
        value = getattr(model, name)
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
