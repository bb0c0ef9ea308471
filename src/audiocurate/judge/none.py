"""`judge.backend: none`: transcribe-only runs. Every transcribed row that passes the filters
is kept; the judge's columns are written as nulls (the outputs keep one schema), and the
`min_score` filter is not built."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field

from .. import contract as C
from ..core.settings import Settings, StageResources
from ..core.stage import Outcome, Stage
from ..engines import Engine
from ..filters.base import Filter
from .backends import JUDGE_BACKENDS


class NoJudgeConfig(Settings):
    """`judge.backend: none`: no judge; rows are kept on the filters alone."""

    backend: Literal["none"] = "none"
    profile: str = Field("none", description="Unused: there is no prompt without a judge.")
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=0.25, batch_size=64),
                                      description="Unused: no actor runs.")


class NoJudgeStage(Stage):
    """Marks each active row as having passed the judge stage unscored (`judge_model` = "none")."""

    name: ClassVar[str] = C.JUDGE
    produces = C.JUDGE_COLUMNS

    def __init__(self, config: Optional[NoJudgeConfig] = None, filters: Sequence[Filter] = ()):
        super().__init__(filters)

    def process(self, table: pa.Table, rows: np.ndarray) -> Outcome:
        return Outcome(values={"judge_model": ["none"] * len(rows)})


@JUDGE_BACKENDS.register("none", config=NoJudgeConfig, engine=Engine("none (no judge)", (), False,
                                                                       "nothing to reinstall"))
class NoJudge:
    """The backend: `stage` as a task, no model (`runs_as`)."""

    runs_as: ClassVar[str] = "task"
    stage: ClassVar[type] = NoJudgeStage
    scores: ClassVar[bool] = False
