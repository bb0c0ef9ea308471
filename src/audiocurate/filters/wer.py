"""WER against a reference transcript in the input (Common Voice `sentence`, a manifest
`text`): measured for every transcribed row, a drop reason only with `max_wer` set."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional

import pyarrow as pa
from pydantic import Field

from ..core.settings import Settings
from .base import FILTERS, Filter
from .text import word_error_rate

if TYPE_CHECKING:
    from ..config import PipelineConfig

WER_ABOVE_MAX = "wer_above_max"


class WerFilter(Settings):
    """Word error rate of the transcript against a reference the input brings; measured for every
    transcribed row when the input has the column, a drop reason only with `max_wer` set."""

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


@FILTERS.register("wer")
class WerAgainstReference(Filter):
    name = "wer"
    settings = WerFilter
    measures_all = True  # the report's WER covers every transcribed row, rejected ones too
    produces = {"wer": pa.float32()}

    def __init__(self, config: WerFilter):
        self.reference = config.reference_column
        self.max_wer, self.normalizer = config.max_wer, config.normalizer
        self.needs = ("transcript", self.reference)

    @classmethod
    def applies(cls, config: "PipelineConfig", input_columns: set[str]) -> bool:
        """Off when the input has no reference column: nothing to measure."""
        return config.filters.wer.reference_column in input_columns

    def measure(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = row[self.reference]
        return {"wer": None if ref is None else word_error_rate(str(ref), row["transcript"] or "", self.normalizer)}

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        w = row["wer"]
        return WER_ABOVE_MAX if self.max_wer is not None and w is not None and w > self.max_wer else None
