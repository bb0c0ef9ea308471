"""Judge backends by name. How a judge runs is a property of its backend: `actor` judges
(llama.cpp, transformers) are created once per Ray actor inside `stages.JudgeStage`;
`processor` judges (`judge.vllm`, `judge.http`) run as `ray.data.llm` processors that bring their
own pools (`judge.processors.ProcessorJudge`).
A backend module registers itself here with its config class and engine facts
(`@JUDGE_BACKENDS.register("name", config=..., engine=engines.Engine(...))`); adding one is that
module and its test."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..core.registry import Registry

if TYPE_CHECKING:
    import ray

    from ..config import PipelineConfig

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

    @classmethod
    def apply(cls, ds: "ray.data.Dataset", config: "PipelineConfig", concurrency: Any,
              cpu_scale: float = 1.0) -> "ray.data.Dataset":
        from ..stages import JudgeStage

        return apply_judge_stage(JudgeStage, ds, config, concurrency, cpu_scale)


def apply_judge_stage(stage: type, ds: "ray.data.Dataset", config: "PipelineConfig", concurrency: Any,
                      cpu_scale: float = 1.0) -> "ray.data.Dataset":
    """`stage` (`stages.JudgeStage` or a subclass of it) as the judge's actor pool."""
    from ..runtime import actor_args

    # Whole blocks (batch_size=None): the stage batches its active rows itself, so a block
    # of rows already rejected costs one call, not one per `judge.resources.batch_size` rows.
    faults = {"engine_fault_retries": config.ray.engine_fault_retries,
              "engine_fault_backoff_s": config.ray.engine_fault_backoff_s}
    return ds.map_batches(stage, fn_constructor_kwargs={"config": config.judge, **faults},
                          batch_format="pyarrow", udf_modifying_row_count=False,
                          **{**actor_args(config.ray, config.judge.resources, concurrency, cpu_scale),
                             "batch_size": None})
