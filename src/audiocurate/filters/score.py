"""The curation decision itself: keep rows the judge scored at least `select.min_score`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

from .base import FILTERS, Filter

if TYPE_CHECKING:
    from ..config import SelectConfig

LOW_EDU_SCORE = "low_edu_score"


@FILTERS.register("min_score")
class MinScore(Filter):
    name = "min_score"
    needs = ("edu_score",)

    def __init__(self, config: "SelectConfig"):
        self.min_score = config.min_score

    @classmethod
    def configured(cls, config: Any, input_columns: set[str]) -> Optional[Filter]:
        """From `select`, not a `filters` section."""
        from ..judge.backends import judge_backend

        # `judge.backend: none` writes no scores: rows are kept on the other filters alone.
        return cls(config.select) if getattr(judge_backend(config.judge.backend), "scores", True) else None

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        s = row["edu_score"]
        return LOW_EDU_SCORE if s is None or s < self.min_score else None
