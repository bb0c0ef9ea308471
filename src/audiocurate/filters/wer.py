"""WER against a reference transcript in the input (Common Voice `sentence`, a manifest
`text`): measured for every transcribed row, a drop reason only with `max_wer` set."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import pyarrow as pa

from ..config import WerFilter
from .base import FILTERS, Filter
from .text import word_error_rate

WER_ABOVE_MAX = "wer_above_max"


@FILTERS.register("wer")
class WerAgainstReference(Filter):
    name = "wer"
    measures_all = True  # the report's WER covers every transcribed row, rejected ones too
    produces = {"wer": pa.float32()}

    def __init__(self, config: WerFilter):
        self.reference = config.reference_column
        self.max_wer, self.normalizer = config.max_wer, config.normalizer
        self.needs = ("transcript", self.reference)

    @classmethod
    def configured(cls, config: Any, input_columns: set[str]) -> Optional[Filter]:
        """Off when the input has no reference column: nothing to measure."""
        wer = config.filters.wer
        return cls(wer) if wer.reference_column in input_columns else None

    def measure(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = row[self.reference]
        return {"wer": None if ref is None else word_error_rate(str(ref), row["transcript"] or "", self.normalizer)}

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        w = row["wer"]
        return WER_ABOVE_MAX if self.max_wer is not None and w is not None and w > self.max_wer else None
