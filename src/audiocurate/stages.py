"""The pipeline's stages, each on `core.stage.Stage`: a Ray Data batch UDF over Arrow tables
that gets only its own config section. Use them in your own `map_batches` calls with
`batch_format="pyarrow"`, or call them on a `pyarrow.Table` directly (the unit tests do):

>>> ds = ds.map_batches(DecodeStage(config.decode, "audio_bytes"), batch_format="pyarrow")  # doctest: +SKIP
>>> ds = ds.map_batches(TranscribeStage, fn_constructor_kwargs={"config": config.asr},      # doctest: +SKIP
...                     concurrency=2, num_cpus=0.5, batch_format="pyarrow")

Rows that failed or were rejected upstream pass through untouched; a row that fails here
becomes an error row naming this stage. Source columns are never modified: a produced
column that an input column would collide with is refused at start (`contract.check_columns`).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import contract as C
from .asr import ASR_BACKENDS
from .audio import (AudioDecodeError, ClipTooLong, DecodedAudio, PcmSink, SinkError, cell_buffer, decode_audio,
                    encode_flac)
from .config import AsrConfig, DecodeConfig, JudgeConfig, OutputConfig
from .core.registry import Registry
from .core.stage import ModelStage, Outcome, Stage
from .engines import CrashWitness, engine_of
from .filters.audio import TOO_LONG, decode_measures, rejected_on_measures
from .filters.base import Filter
from .judge.backends import JUDGE_BACKENDS
from .judge.profile import load_judge_profile
from .sources.audio_cells import AudioFetcher, audio_input_of

if TYPE_CHECKING:
    from .asr import Transcriber
    from .judge import Judge


class DecodeStage(Stage):
    """Decode + resample to 16 kHz mono (CPU task); the audio filters run on what it measured,
    and a row they reject drops its samples here."""

    name = C.DECODE
    produces = {**C.DECODE_COLUMNS, C.PCM: pa.large_binary()}

    def __init__(self, config: DecodeConfig, audio_column: str, fetcher: Optional[AudioFetcher] = None,
                 filters: Sequence[Filter] = ()):
        super().__init__(filters)
        self.config = config
        self.audio_column = audio_column
        self.needs = (audio_column,)
        self.fetcher = fetcher

    def process(self, table: pa.Table, rows: np.ndarray) -> Outcome:
        out = Outcome(values={k: [None] * len(rows) for k in self.produces})
        for j, i in enumerate(rows):
            clip = self.decode_row(table, int(i), out, j)
            if clip is not None:
                out.values[C.PCM][j] = clip.pcm.tobytes()
        return out

    def decode_row(self, table: pa.Table, i: int, out: Outcome, j: int,
                   into: Optional[PcmSink] = None) -> Optional[DecodedAudio]:
        """Row `i` decoded (its samples in the clip, or streamed `into` a sink), its columns set
        at position `j` of `out`; None, and the reason in `out.errors`, where it failed."""
        d = self.config
        v = out.values
        t0 = time.perf_counter()
        clip = None
        try:
            # The cell's own buffer: `column[i]` would copy it (an Arrow scalar owns its bytes).
            cells = table[self.audio_column]
            data = cell_buffer(cells, i) or audio_input_of(cells[i], self.fetcher)
            try:
                # A long clip the filters here reject on its measures (silence) is measured as it
                # streams and never held whole; a segmented recording (`into`) is cut as it decodes.
                def wanted(measured: DecodedAudio) -> bool:
                    return not rejected_on_measures(self.filters, table, i, measured)
                clip = decode_audio(data, target_rate=d.sample_rate, min_source_rate=d.min_source_sample_rate,
                                    max_source_rate=d.max_source_sample_rate,
                                    truncation_tolerance_s=d.truncation_tolerance_s, into=into,
                                    max_duration_s=d.max_duration_s if into is None else None,
                                    keep_samples=wanted if self.filters and into is None else None)
            finally:
                if isinstance(data, pa.NativeFile):
                    data.close()
        except ClipTooLong as e:  # a rejection, not a fault of the audio
            out.drops[j] = TOO_LONG
            v["duration_s"][j] = e.duration_s
            v["source_sample_rate"][j] = e.source_sample_rate
            v["source_channels"][j] = e.source_channels
            v["source_format"][j] = e.source_format
        except AudioDecodeError as e:
            out.errors[j] = e.reason
        except SinkError:  # VAD or the spool failed, not the audio: the task fails, and says why
            raise
        except Exception as e:  # a decoder bug must cost one row, not the run
            out.errors[j] = f"unexpected {type(e).__name__}: {e}"
        else:
            for column, value in decode_measures(clip).items():
                v[column][j] = value
        v["decode_s"][j] = time.perf_counter() - t0
        return clip

    def finish(self, table: pa.Table) -> pa.Table:
        return C.drop_settled_pcm(table) if self.filters else table


class EngineStage(ModelStage):
    """A model stage whose engine is the backend its config section names (`asr.backend`,
    `judge.backend`), created from that section's registry once per Ray actor, with the first
    block that has a row for it: blocks of rows already settled pass without waiting for a
    model. A restarted actor whose engine died from a signal says so (`engines.CrashWitness`)
    instead of loading it again. A subclass names its section, its registry and the attribute
    its engine is loaded into (`engine_attribute`, a `loaded_engine()`)."""

    section: ClassVar[str] = ""
    registry: ClassVar[Registry[Any]]

    def __init__(self, config: Any, filters: Sequence[Filter] = (), *, engine_fault_retries: int = 2,
                 engine_fault_backoff_s: float = 1.0):
        super().__init__(config.resources.batch_size, filters, engine_fault_retries=engine_fault_retries,
                         engine_fault_backoff_s=engine_fault_backoff_s)
        self.config = config
        self.crash_witness = CrashWitness(self.section, config.backend)
        self.crash_witness.arm()

    @property
    def engine_name(self) -> str:
        return engine_of(self.section, self.config.backend).name

    def engine_args(self) -> tuple[Any, ...]:
        """What the backend's class is called with."""
        return (self.config,)

    def create_engine(self) -> Any:
        backend = self.registry.get(self.config.backend)
        runs_as = getattr(backend, "runs_as", "actor")
        if runs_as != "actor":
            raise ValueError(f"{self.section}.backend {self.config.backend!r} runs as a {runs_as}, "
                             f"not inside a {self.name} actor")
        return backend(*self.engine_args())


def loaded_engine() -> Any:
    """An `EngineStage`'s engine attribute: created on first use (`create_engine`), kept in the
    instance, dropped by `reset_engine` after an engine fault so the next try loads it anew."""
    return functools.cached_property(lambda stage: stage.create_engine())


class TranscribeStage(EngineStage):
    """Whisper on every active row (actor: the model loads once), then the filters placed
    here (transcript checks, WER): they cost no task of their own, and a row they reject
    never travels to the judge's actor."""

    name = C.TRANSCRIBE
    needs = (C.PCM,)
    timing_column = "asr_s"
    error_prefix = "transcription failed: "
    section = "asr"
    registry = ASR_BACKENDS
    engine_attribute = "transcriber"
    transcriber: "Transcriber" = loaded_engine()

    def __init__(self, config: AsrConfig, filters: Sequence[Filter] = (), *, engine_fault_retries: int = 2,
                 engine_fault_backoff_s: float = 1.0):
        super().__init__(config, filters, engine_fault_retries=engine_fault_retries,
                         engine_fault_backoff_s=engine_fault_backoff_s)
        self.produces = C.asr_columns(config)

    def inputs(self, table: pa.Table, rows: np.ndarray) -> list[Any]:
        return C.pcm_rows(table, rows)

    def run_batch(self, items: list[Any]) -> list[Any]:
        return self.transcriber.transcribe_batch(items)

    def weight(self, item: Any) -> float:
        return float(max(len(item), 1))

    def row_values(self, r: Any) -> tuple[dict[str, Any], Optional[str]]:
        return {
            "transcript": r.text,
            "language": r.language,
            "avg_logprob": _finite_or_none(r.avg_logprob),
            "no_speech_prob": _finite_or_none(r.no_speech_prob),
            "compression_ratio": r.compression_ratio,
            "asr_model": self.transcriber.model_name,
            "language_prob": _finite_or_none(r.language_prob),
            "words": r.words,
        }, None


class JudgeStage(EngineStage):
    """The educational-value judge on every active transcript (actor)."""

    name = C.JUDGE
    produces = C.JUDGE_COLUMNS
    needs = ("transcript",)
    timing_column = "judge_s"
    error_prefix = "judge failed: "
    section = "judge"
    registry = JUDGE_BACKENDS
    engine_attribute = "judge"
    judge: "Judge" = loaded_engine()

    def __init__(self, config: JudgeConfig, filters: Sequence[Filter] = (), *, engine_fault_retries: int = 2,
                 engine_fault_backoff_s: float = 1.0):
        super().__init__(config, filters, engine_fault_retries=engine_fault_retries,
                         engine_fault_backoff_s=engine_fault_backoff_s)

    def engine_args(self) -> tuple[Any, ...]:
        return (self.config, load_judge_profile(self.config.profile))

    def inputs(self, table: pa.Table, rows: np.ndarray) -> list[Any]:
        """(transcript, language) per row; the language (the ASR stage's column, or the source's)
        is stated in the prompt by profiles with a `language_line`."""
        index = pa.array(rows, pa.int64())
        texts = [t or "" for t in table["transcript"].take(index).to_pylist()]
        languages = (table["language"].take(index).to_pylist() if "language" in table.column_names
                     else [None] * len(texts))
        return list(zip(texts, languages))

    def run_batch(self, items: list[Any]) -> list[Any]:
        texts, languages = [text for text, _ in items], [language for _, language in items]
        # A judge written before `languages` existed keeps working on rows with no language.
        return self.judge.score_batch(texts, languages) if any(languages) else self.judge.score_batch(texts)

    def row_values(self, s: Any) -> tuple[dict[str, Any], Optional[str]]:
        if s.error:
            return {"judge_model": self.judge.model_name}, s.error
        return {"edu_score": s.score, "edu_score_mean": s.mean, "edu_probs": s.probs,
                "judge_model": self.judge.model_name, "judge_truncated": s.truncated}, None


class SelectStage(Stage):
    """The filters that need the judge's columns, `min_score` first: the rows they reject go
    to `rejected/`, the rest are curated."""

    name = C.SELECT


class PackageStage(Stage):
    """The curated rows' audio as an `{bytes, path}` struct; transport columns removed."""

    name = C.PACKAGE
    produces = {C.AUDIO: C.AUDIO_TYPE}

    def __init__(self, config: OutputConfig, audio_column: str, id_column: str):
        super().__init__()
        self.config = config
        self.audio_column = audio_column
        self.id_column = id_column
        self.needs = (id_column, C.PCM)

    def process(self, table: pa.Table, rows: np.ndarray) -> Outcome:
        ids = table[self.id_column]
        source = table[self.audio_column] if self.audio_column in table.column_names else None
        audio: list[Optional[dict[str, Any]]] = []
        pcm = C.pcm_rows(table, rows)
        for k, i in enumerate(rows.tolist()):
            rid = str(ids[i].as_py())
            if self.config.audio_format == "original" and source is not None:
                cell = source[i].as_py()
                data = cell.get("bytes") if isinstance(cell, dict) else cell
                name = (cell.get("path") if isinstance(cell, dict) else None) or rid
                if isinstance(data, (bytes, bytearray)):
                    audio.append({"bytes": bytes(data), "path": _basename(name)})
                    continue
            # A segment's id (`<parent>@<start>`) keeps its start: two segments never share a name.
            name = _basename(rid) if "@" in rid else _stem(rid)
            audio.append({"bytes": encode_flac(pcm[k]), "path": f"{name}.flac"})
        return Outcome(values={C.AUDIO: audio})

    def finish(self, table: pa.Table) -> pa.Table:
        # In Hugging Face layouts the source's audio column is `audio` too, and was just
        # replaced by the packaged one.
        drop = [c for c in (C.PCM, self.audio_column) if c in table.column_names and c != C.AUDIO]
        return table.drop_columns(drop)


class SkipIdsStage:
    """Resume and `--limit`: drop rows already in the output, keep only a chosen id set.

    An actor, so each worker builds its hash set once from the object store."""

    def __init__(self, id_column: str, skip_ref: Any = None, keep_ref: Any = None, settled_only: bool = False):
        import ray

        self.id_column = id_column
        self.settled_only = settled_only  # skip only rows that settled already (resume.DropWrittenSegments)
        # Refs arrive wrapped in a list so Ray hands us the ref, not a copy per argument.
        self.skip = frozenset(ray.get(skip_ref[0])) if skip_ref is not None else None
        self.keep = frozenset(ray.get(keep_ref[0])) if keep_ref is not None else None

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = pc.cast(table[self.id_column], pa.string()).to_pylist()
        active = C.active_mask(C.ensure_status(table)) if self.settled_only else [False] * len(ids)
        mask = [(self.keep is None or i in self.keep) and (self.skip is None or i not in self.skip or a)
                for i, a in zip(ids, active)]
        return table.filter(pa.array(mask, pa.bool_()))


def _finite_or_none(x: float) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else float(x)


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _stem(name: str) -> str:
    base = _basename(name)
    return base.rsplit(".", 1)[0] if "." in base else base
