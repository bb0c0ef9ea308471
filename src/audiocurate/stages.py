"""The pipeline's stages as Ray Data batch UDFs over Arrow tables.

Each stage is a class: `__init__` loads what it needs once (per task for CPU stages, per actor
for model stages), `__call__(table) -> table` adds its columns. Use them in your own
`map_batches` calls with `batch_format="pyarrow"`:

>>> ds = ds.map_batches(DecodeStage(config, "audio_bytes"), batch_format="pyarrow")  # doctest: +SKIP
>>> ds = ds.map_batches(TranscribeStage, fn_constructor_kwargs={"config": config},    # doctest: +SKIP
...                     concurrency=2, num_cpus=0.5, batch_format="pyarrow")

Rows that failed or were rejected upstream pass through untouched; a row that fails here
becomes an error row naming this stage. Source columns are never modified.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from . import contract as C
from .contract import DECODE, JUDGE, TRANSCRIBE
from .audio import AudioDecodeError, decode_audio, encode_flac
from .config import PipelineConfig
from .engines import CrashWitness
from .filters import (
    LOW_EDU_SCORE,
    WER_ABOVE_MAX,
    AudioFilters,
    TranscriptFacts,
    TranscriptFilters,
    word_error_rate,
)

if TYPE_CHECKING:
    from .asr import Transcriber
    from .judge import Judge


class AudioFetcher:
    """Reads audio named by path (folder sources, HF rows without bytes) from the source's
    filesystem; relative paths resolve against the source root."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs = fs
        self.root = root.rstrip("/")

    def read(self, path: str) -> bytes:
        full = path if path.startswith("/") or "://" in path else f"{self.root}/{path}"
        if "://" in full:
            fs, full = pafs.FileSystem.from_uri(full)
        else:
            fs = self.fs
        try:
            with fs.open_input_stream(full) as f:
                return f.read()
        except FileNotFoundError:
            raise AudioDecodeError(f"file not found: {path}") from None
        except OSError as e:
            raise AudioDecodeError(f"cannot read {path}: {e}") from None


def audio_bytes_of(value: Any, fetcher: Optional[AudioFetcher]) -> bytes:
    """The encoded audio in a cell: bytes, a `{bytes, path}` struct, or a path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value:
        if fetcher is None:
            raise AudioDecodeError(f"row names a file ({value}) but the source has no filesystem")
        return fetcher.read(value)
    if value is None:
        return b""
    raise AudioDecodeError(f"audio cell holds {type(value).__name__}, not bytes or a path")


class DecodeStage:
    """Decode + resample to 16 kHz mono (CPU task), then the cheap audio filters."""

    def __init__(self, config: PipelineConfig, audio_column: str, fetcher: Optional[AudioFetcher] = None):
        self.config = config
        self.audio_column = audio_column
        self.fetcher = fetcher
        self.filters = AudioFilters(config.filters)

    def __call__(self, table: pa.Table) -> pa.Table:
        table = C.ensure_status(table)
        n = table.num_rows
        active = C.active_mask(table)
        values: dict[str, list[Any]] = {k: [None] * n for k in C.DECODE_COLUMNS}
        pcm: list[Optional[bytes]] = [None] * n
        errors: dict[int, tuple[str, str]] = {}
        drops: dict[int, str] = {}
        d = self.config.decode
        cells = table[self.audio_column]
        for i in range(n):
            if not active[i]:
                continue
            t0 = time.perf_counter()
            try:
                clip = decode_audio(
                    audio_bytes_of(cells[i].as_py(), self.fetcher),
                    target_rate=d.sample_rate,
                    min_source_rate=d.min_source_sample_rate,
                    max_source_rate=d.max_source_sample_rate,
                    truncation_tolerance_s=d.truncation_tolerance_s,
                )
            except AudioDecodeError as e:
                errors[i] = (DECODE, e.reason)
            except Exception as e:  # a decoder bug must cost one row, not the run
                errors[i] = (DECODE, f"unexpected {type(e).__name__}: {e}")
            else:
                values["duration_s"][i] = clip.duration_s
                values["source_sample_rate"][i] = clip.source_sample_rate
                values["source_channels"][i] = clip.source_channels
                values["source_format"][i] = clip.source_format
                values["peak_dbfs"][i] = max(clip.peak_dbfs, -200.0)
                values["rms_dbfs"][i] = max(clip.rms_dbfs, -200.0)
                reason = self.filters.reason(clip.duration_s, clip.peak_dbfs)
                if reason:
                    drops[i] = reason
                else:
                    pcm[i] = clip.pcm.tobytes()
            values["decode_s"][i] = time.perf_counter() - t0
        table = C.put_columns(table, C.DECODE_COLUMNS, values)
        table = C.put_column(table, C.PCM, pcm, pa.large_binary())
        return C.mark(table, errors=errors, drops=drops)


class TranscribeStage:
    """Whisper on every active row (actor: the model loads once)."""

    def __init__(self, config: PipelineConfig, text_filters: bool = False):
        self.config = config
        # The transcript filters need only what this stage produces: run here, they cost no
        # task of their own, and a row they reject never travels to the judge's actor as work.
        self.text_filters = TextFilterStage(config) if text_filters else None
        # A restarted actor whose engine died from a signal says so instead of loading it again.
        self.crash_witness = CrashWitness("asr", config.asr.backend)
        self.crash_witness.arm()

    @functools.cached_property
    def transcriber(self) -> "Transcriber":
        """Loaded with the first block that has a row to transcribe: blocks of rows already
        rejected pass without waiting for a model."""
        from .asr import make_transcriber

        return make_transcriber(self.config.asr)

    def __call__(self, table: pa.Table) -> pa.Table:
        table = C.ensure_status(table)
        idx = np.flatnonzero(C.active_mask(table))
        if not len(idx):
            table = C.put_null_columns(table, C.ASR_COLUMNS)
        else:
            table = self._transcribe(table, idx)
        return self.text_filters(table) if self.text_filters is not None else table

    def _transcribe(self, table: pa.Table, idx: np.ndarray) -> pa.Table:
        n = table.num_rows
        values: dict[str, list[Any]] = {k: [None] * n for k in C.ASR_COLUMNS}
        errors: dict[int, tuple[str, str]] = {}
        clips = [C.pcm_of(table, int(i)) for i in idx]
        results: list[Any] = []
        seconds: list[float] = []
        step = self.config.asr.resources.batch_size
        for lo in range(0, len(clips), step):
            batch = clips[lo:lo + step]
            t0 = time.perf_counter()
            try:
                results.extend(self.transcriber.transcribe_batch(batch))
            except Exception:
                # Find the row that broke the batch: one call per row, each failing alone.
                for clip in batch:
                    try:
                        results.extend(self.transcriber.transcribe_batch([clip]))
                    except Exception as e:
                        results.append(e)
            elapsed = time.perf_counter() - t0
            samples = max(sum(len(c) for c in batch), 1)
            seconds.extend(elapsed * len(c) / samples for c in batch)
        for j, i in enumerate(idx):
            r = results[j]
            values["asr_s"][i] = seconds[j]
            if isinstance(r, Exception):
                errors[int(i)] = (TRANSCRIBE, f"transcription failed: {type(r).__name__}: {r}")
                continue
            values["transcript"][i] = r.text
            values["language"][i] = r.language
            values["avg_logprob"][i] = _finite_or_none(r.avg_logprob)
            values["no_speech_prob"][i] = _finite_or_none(r.no_speech_prob)
            values["compression_ratio"][i] = r.compression_ratio
            values["asr_model"][i] = self.transcriber.model_name
        table = C.put_columns(table, C.ASR_COLUMNS, values)
        return C.mark(table, errors=errors)


class TextFilterStage:
    """Hallucination checks and WER against a reference column (CPU task)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.filters = TranscriptFilters(config.filters)

    def __call__(self, table: pa.Table) -> pa.Table:
        table = C.ensure_status(table)
        n = table.num_rows
        active = C.active_mask(table)
        wer_cfg = self.config.filters.wer
        ref_col = wer_cfg.reference_column if wer_cfg.reference_column in table.column_names else None
        if not active.any():
            return C.put_null_columns(table, C.WER_COLUMNS) if ref_col else table
        wers: list[Optional[float]] = [None] * n
        drops: dict[int, str] = {}
        cols = {k: table[k].to_pylist() for k in ("transcript", "duration_s", "avg_logprob", "no_speech_prob", "compression_ratio")}
        refs = table[ref_col].to_pylist() if ref_col else None
        for i in np.flatnonzero(active):
            facts = TranscriptFacts(
                text=cols["transcript"][i] or "",
                duration_s=cols["duration_s"][i] or 0.0,
                avg_logprob=_nan_if_none(cols["avg_logprob"][i]),
                no_speech_prob=_nan_if_none(cols["no_speech_prob"][i]),
                compression_ratio=cols["compression_ratio"][i] or 0.0,
            )
            if refs is not None and refs[i] is not None:
                wers[i] = word_error_rate(str(refs[i]), facts.text, wer_cfg.normalizer)
            reason = self.filters.reason(facts)
            if reason is None and wer_cfg.max_wer is not None and wers[i] is not None and wers[i] > wer_cfg.max_wer:
                reason = WER_ABOVE_MAX
            if reason:
                drops[int(i)] = reason
        if ref_col:
            table = C.put_column(table, "wer", wers, pa.float32())
        return C.mark(table, drops=drops)


class JudgeStage:
    """The educational-value judge on every active transcript (actor)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.crash_witness = CrashWitness("judge", config.judge.backend)
        self.crash_witness.arm()

    @functools.cached_property
    def judge(self) -> "Judge":
        """Loaded with the first block that has a row to judge (see TranscribeStage.transcriber)."""
        from .judge import make_judge

        return make_judge(self.config.judge)

    def __call__(self, table: pa.Table) -> pa.Table:
        table = C.ensure_status(table)
        n = table.num_rows
        idx = np.flatnonzero(C.active_mask(table))
        if not len(idx):
            return C.put_null_columns(table, C.JUDGE_COLUMNS)
        values: dict[str, list[Any]] = {k: [None] * n for k in C.JUDGE_COLUMNS}
        errors: dict[int, tuple[str, str]] = {}
        transcripts = table["transcript"]
        texts = [transcripts[int(i)].as_py() or "" for i in idx]
        scores: list[Any] = []
        per_row: list[float] = []
        step = self.config.judge.resources.batch_size
        for lo in range(0, len(texts), step):
            t0 = time.perf_counter()
            batch = self.judge.score_batch(texts[lo:lo + step])
            scores.extend(batch)
            per_row.extend([(time.perf_counter() - t0) / len(batch)] * len(batch))
        for i, s, seconds in zip(idx, scores, per_row):
            values["judge_s"][i] = seconds
            values["judge_model"][i] = self.judge.model_name
            if s.error:
                errors[int(i)] = (JUDGE, s.error)
                continue
            values["edu_score"][i] = s.score
            values["edu_score_mean"][i] = s.mean
            values["edu_probs"][i] = s.probs
            values["judge_truncated"][i] = s.truncated
        table = C.put_columns(table, C.JUDGE_COLUMNS, values)
        return C.mark(table, errors=errors)


class SelectStage:
    """Keep rows scoring at least `select.min_score`; the rest go to `rejected/`."""

    def __init__(self, config: PipelineConfig):
        self.min_score = config.select.min_score

    def __call__(self, table: pa.Table) -> pa.Table:
        table = C.ensure_status(table)
        active = C.active_mask(table)
        scores = table["edu_score"].to_pylist()
        drops = {int(i): LOW_EDU_SCORE for i in np.flatnonzero(active)
                 if scores[i] is None or scores[i] < self.min_score}
        return C.mark(table, drops=drops)


class PackageStage:
    """The curated rows' audio as an `{bytes, path}` struct; transport columns removed."""

    def __init__(self, config: PipelineConfig, audio_column: str, id_column: str):
        self.config = config
        self.audio_column = audio_column
        self.id_column = id_column

    def __call__(self, table: pa.Table) -> pa.Table:
        table = C.ensure_status(table)
        active = C.active_mask(table)
        ids = table[self.id_column].to_pylist()
        source = table[self.audio_column] if self.audio_column in table.column_names else None
        audio: list[Optional[dict[str, Any]]] = [None] * table.num_rows
        for i in np.flatnonzero(active):
            if self.config.output.audio_format == "original" and source is not None:
                cell = source[int(i)].as_py()
                data = cell.get("bytes") if isinstance(cell, dict) else cell
                name = (cell.get("path") if isinstance(cell, dict) else None) or str(ids[i])
                if isinstance(data, (bytes, bytearray)):
                    audio[i] = {"bytes": bytes(data), "path": _basename(name)}
                    continue
            audio[i] = {"bytes": encode_flac(C.pcm_of(table, int(i))), "path": f"{_stem(str(ids[i]))}.flac"}
        drop = [c for c in (C.PCM, self.audio_column) if c in table.column_names]
        table = table.drop_columns(drop)
        return C.put_column(table, C.AUDIO, audio, C.AUDIO_TYPE)


class SkipIdsStage:
    """Resume and `--limit`: drop rows already in the output, keep only a chosen id set.

    An actor, so each worker builds its hash set once from the object store."""

    def __init__(self, id_column: str, skip_ref: Any = None, keep_ref: Any = None):
        import ray

        self.id_column = id_column
        # Refs arrive wrapped in a list so Ray hands us the ref, not a copy per argument.
        self.skip = frozenset(ray.get(skip_ref[0])) if skip_ref is not None else None
        self.keep = frozenset(ray.get(keep_ref[0])) if keep_ref is not None else None

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = pc.cast(table[self.id_column], pa.string()).to_pylist()
        mask = [(self.keep is None or i in self.keep) and (self.skip is None or i not in self.skip) for i in ids]
        return table.filter(pa.array(mask, pa.bool_()))


def _finite_or_none(x: float) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else float(x)


def _nan_if_none(x: Optional[float]) -> float:
    return float("nan") if x is None else float(x)


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _stem(name: str) -> str:
    base = _basename(name)
    return base.rsplit(".", 1)[0] if "." in base else base
