"""The machinery every judge that runs as a `ray.data.llm` processor shares (`judge.vllm`,
`judge.http`): rows settled upstream pass through unsent, the label log-probabilities become
scores, and an engine's failure fails the block instead of becoming N error rows.

Rows that failed or were rejected upstream cost no request: the request functions mark them
with `__inference_error__` (`SKIPPED`), which every stage of Ray's processors passes by
untouched (`StatefulStageUDF`), and the result stage leaves them as they came. Rows the engine
fails on come back with `__inference_error__` (`should_continue_on_error`) and become error
rows, unless the failure is the engine's (`core.faults`: a dead engine, out of memory, every row
of a block failing the same way): then the block fails with `EngineFault`, and no row is lost.

A processor backend registers a `ProcessorJudge` whose `build(judge_config, profile,
concurrency)` returns Ray's processor and the model's name. Nothing here touches a Dataset: the
planner makes the judge a `processor` step (`plan.judge_steps`) and `runtime.apply_step` applies it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import numpy as np
import pyarrow as pa

from .. import contract as C
from ..core.faults import EngineFault, classify_failure_texts
from ..core.stage import Outcome, Stage
from . import score_from_logits
from .backends import JUDGE_BACKENDS
from .profile import JudgeProfile, load_judge_profile


class RunWithJudge(Protocol):
    """What these functions read of a run's `config.PipelineConfig`: its judge section (typed
    here by shape, so the engine package does not import the configuration that imports it)."""

    judge: Any


LABEL_LOGPROBS = "_judge_label_logprobs"
JUDGE_ERROR = "_judge_error"
INFERENCE_ERROR = "__inference_error__"
TOP_LOGPROBS = 20

# What a row settled upstream carries through the processor instead of a request. Ray's
# stages skip a row whose `__inference_error__` is set, and its postprocess hands it on as is.
SKIPPED = "audiocurate: settled before the judge, not sent"


def is_active(row: dict[str, Any]) -> bool:
    return row.get(C.ERROR_STAGE) is None and row.get(C.DROP_REASON) is None


def skipped(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, INFERENCE_ERROR: SKIPPED}


def sent(row: dict[str, Any]) -> dict[str, Any]:
    """A row that gets a request. Its `__inference_error__` is set empty: a row without the key
    shares a block with skipped ones, where Arrow fills it with null, which Ray's stages take
    for an error (`!= ""`) and skip too."""
    return {**row, INFERENCE_ERROR: ""}


def label_logprobs_from_tokens(tokens: dict[str, float], labels: list[str]) -> list[float]:
    """Each label's best log-probability among the returned tokens (" 3" counts as "3");
    a label the server did not return is -inf (it ranked below every returned token)."""
    best = {label: -math.inf for label in labels}
    for tok, lp in tokens.items():
        t = tok.strip()
        if t in best and lp is not None and lp > best[t]:
            best[t] = float(lp)
    return [best[label] for label in labels]


class ProcessorJudgeResultStage(Stage):
    """After a processor: scores from the label log-probabilities, errors as error rows."""

    name = C.JUDGE
    produces = C.JUDGE_COLUMNS
    retryable_errors = True  # a server's refusal (an overloaded server, a 5xx after the retries)

    def __init__(self, config: RunWithJudge, model_name: str):
        super().__init__()
        self.profile = load_judge_profile(config.judge.profile)
        self.model_name = model_name
        self.backend = config.judge.backend

    def process(self, table: pa.Table, rows: np.ndarray) -> Outcome:
        out = Outcome(values={k: [None] * len(rows) for k in self.produces})
        v = out.values
        index = pa.array(rows, pa.int64())

        def column(name: str) -> list[Any]:
            return table[name].take(index).to_pylist() if name in table.column_names else [None] * len(rows)

        lps, jerr, ierr = column(LABEL_LOGPROBS), column(JUDGE_ERROR), column(INFERENCE_ERROR)
        texts = column("transcript")
        # core.faults' rules: the engine's failure (a dead vLLM engine, out of memory, a refused
        # connection, or every row failing the same way) stops the block, not N error rows.
        fault = classify_failure_texts([ierr[j] or jerr[j] for j in range(len(rows))])
        if fault is not None:
            raise EngineFault(self.name, f"{self.model_name} ({self.backend})", fault, 1)
        for j in range(len(rows)):
            v["judge_model"][j] = self.model_name
            reason = ierr[j] or jerr[j]
            if reason:
                out.errors[j] = f"judge failed: {reason}"[:500]
                continue
            s = score_from_logits(np.array(lps[j] if lps[j] is not None else [-math.inf] * 5, dtype=float), self.profile,
                                  n_chars=len(self.profile.clean(texts[j])))
            if s.error:
                out.errors[j] = s.error
                continue
            v["edu_score"][j], v["edu_score_mean"][j], v["edu_probs"][j] = s.score, s.mean, s.probs
            v["judge_truncated"][j] = False
        return out

    def finish(self, table: pa.Table) -> pa.Table:
        return table.drop_columns([c for c in (LABEL_LOGPROBS, JUDGE_ERROR, INFERENCE_ERROR) if c in table.column_names])


class ProcessorJudge:
    """A judge backend that runs as a `ray.data.llm` processor bringing its own pools:
    `build(judge_config, profile, concurrency)` -> (processor, model name). It only builds;
    `runtime.apply_step` applies the processor to the Dataset (a `processor` step)."""

    runs_as = "processor"
    needs = ("transcript",)  # the request functions read each row's transcript (and language, if any)

    def __init__(self, name: str, build: Callable[[Any, JudgeProfile, Any], tuple[Any, str]]):
        self.name = name
        self.build = build


def judge_model_name(judge: Any, profile: JudgeProfile) -> str:
    """The model a processor judge asks for: `judge.model`, else the profile's."""
    return judge.model or profile.model


def processor_judge_model(config: RunWithJudge) -> str:
    """The model name the configured processor judge writes to `judge_model`, known without
    building its processor (the planner reads it)."""
    return judge_model_name(config.judge, load_judge_profile(config.judge.profile))


def build_judge_processor(config: RunWithJudge, concurrency: Any) -> tuple[Any, str]:
    """The `ray.data.llm` processor of the configured processor judge, and its model name."""
    backend = JUDGE_BACKENDS.get(config.judge.backend)
    if not isinstance(backend, ProcessorJudge):
        raise ValueError(f"judge backend {config.judge.backend!r} has no ray.data.llm processor")
    return backend.build(config.judge, load_judge_profile(config.judge.profile), concurrency)


def judge_processor(config: RunWithJudge, concurrency: Any) -> Any:
    """The processor alone: what a planned `processor` step builds where it is applied."""
    processor, _ = build_judge_processor(config, concurrency)
    return processor
