"""`asr.backend: none`: transcripts that exist already, read from a column of the input.

For judge-only runs: Common Voice's `sentence`, or the `transcript` of an earlier output that a
new judge profile should score again. The rows take the same path as transcribed ones (decode,
the filters placed at transcribe, judge, select, accounting, resume); no ASR model loads.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal, Optional, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field

from .. import contract as C
from ..core.settings import Settings, StageResources
from ..core.stage import Outcome, Stage
from ..engines import Engine
from ..filters.base import Filter
from . import ASR_BACKENDS


class ExistingTranscriptConfig(Settings):
    """`asr.backend: none`: take each row's transcript from `text_column`; no ASR model runs."""

    backend: Literal["none"] = "none"
    text_column: str = Field(
        ..., description="Input column holding each row's transcript (e.g. Common Voice's `sentence`, or "
        "`transcript` of an earlier audiocurate output). A row whose value is empty or null is rejected "
        "as `empty_transcript` by the hallucination filter, like an empty Whisper transcript.")
    language: Optional[str] = Field("en", description="Written to the `language` column; None if unknown.")
    resources: StageResources = Field(
        default_factory=lambda: StageResources(num_cpus=0.25, batch_size=64),
        description="Copying a column is a light task beside decode: no actor, no model.")


class ExistingTranscriptStage(Stage):
    """Copies the input's transcript column into `transcript` for every active row."""

    name: ClassVar[str] = C.TRANSCRIBE

    def __init__(self, config: ExistingTranscriptConfig, filters: Sequence[Filter] = ()):
        super().__init__(filters)
        self.config = config
        self.needs = (config.text_column,)
        self.produces = C.asr_columns(config)  # type: ignore[misc]

    def process(self, table: pa.Table, rows: np.ndarray) -> Outcome:
        t0 = time.perf_counter()
        texts = table[self.config.text_column].take(pa.array(rows)).to_pylist()
        each = (time.perf_counter() - t0) / max(len(rows), 1)
        n = len(rows)
        return Outcome(values={
            "transcript": [("" if t is None else str(t)) for t in texts],
            "language": [self.config.language] * n,
            "asr_model": [f"column:{self.config.text_column}"] * n,
            "asr_s": [each] * n,  # the report counts a row as transcribed by this column
        })


@ASR_BACKENDS.register("none", config=ExistingTranscriptConfig, engine=Engine(
    "none (transcripts from a column)", (), False, "nothing to reinstall"))
class ExistingTranscripts:
    """The backend: `stage` as a task instead of a model actor (`runs_as`). It reads one
    transcript per input row, so it cannot transcribe a recording's segments (`segments`)."""

    runs_as: ClassVar[str] = "task"
    stage: ClassVar[type] = ExistingTranscriptStage
    segments: ClassVar[bool] = False
