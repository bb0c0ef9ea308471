"""Judge backends by name. How a judge runs is a fact its backend declares (`runs_as`), which
the planner (`plan.py`) turns into the pipeline's judge step: `actor` judges (llama.cpp,
transformers) are created once per Ray actor inside `stages.JudgeStage`; `processor` judges
(`judge.vllm`, `judge.http`) build a `ray.data.llm` processor that brings its own pools
(`judge.processors.ProcessorJudge`); `task` judges (`none`) name the stage they run as.
A backend module registers itself here with its config class and engine facts
(`@JUDGE_BACKENDS.register("name", config=..., engine=engines.Engine(...))`); adding one is that
module and its test."""

from __future__ import annotations

from typing import Any, ClassVar

from ..core.registry import Registry

JUDGE_BACKENDS: Registry[Any] = Registry("judge backend", lazy={
    "llama_cpp": "audiocurate.judge.llama_cpp",
    "transformers": "audiocurate.judge.transformers",
    "vllm": "audiocurate.judge.vllm",
    "http": "audiocurate.judge.http",
    "none": "audiocurate.judge.none",
})


def judge_backend(name: str) -> Any:
    return JUDGE_BACKENDS.get(name)


class ActorJudge:
    """Base of judges built once per actor: `cls(config, profile)`, then `score_batch`."""

    runs_as: ClassVar[str] = "actor"
