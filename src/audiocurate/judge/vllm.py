"""`judge.backend: vllm`: vLLM on GPUs through Ray's `ray.data.llm` processor.

`vLLMEngineProcessorConfig` + `build_processor` (the tutorial's `build_llm_processor` is gone in
Ray 2.60). One token is generated, constrained by vLLM's structured outputs to the five labels
(`structured_outputs={"choice": [...]}`; the tutorial's `guided_decoding` is deprecated), and
the first token's top log-probabilities give p1..p5 (`judge.processors` turns them into scores).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from ..core.settings import SPEED_ONLY
from ..engines import Engine
from ..models import resolve_model
from .backends import JUDGE_BACKENDS
from .processors import (JUDGE_ERROR, LABEL_LOGPROBS, TOP_LOGPROBS, ProcessorJudge, is_active,
                         judge_model_name, label_logprobs_from_tokens, sent, skipped)
from .profile import JudgeProfile
from .settings import JudgeSettings


class VllmJudgeConfig(JudgeSettings):
    """`judge.backend: vllm`: vLLM on GPUs, through `ray.data.llm`."""

    backend: Literal["vllm"] = "vllm"
    dtype: str = Field("auto", description="Weights dtype (`auto`, `float16`, `bfloat16`, `float32`).")
    vllm_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=SPEED_ONLY, description="Extra engine arguments (`max_model_len`, "
        "`gpu_memory_utilization`, `tensor_parallel_size`...)."
    )


class VllmJudgeRequest:
    """Row -> a vLLM request: the profile's prompt, one constrained token, its log-probabilities."""

    def __init__(self, profile: JudgeProfile):
        self.profile = profile

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if not is_active(row):
            return skipped(row)
        text, language = row.get("transcript") or "", row.get("language")
        out = sent(row)
        if self.profile.style == "chat":
            out["messages"] = self.profile.messages(text, language)
        else:
            out["prompt"] = self.profile.prefix() + self.profile.suffix(text, language)
        out["sampling_params"] = {
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": TOP_LOGPROBS,
            "structured_outputs": {"choice": list(self.profile.labels)},
        }
        return out


class VllmJudgeResult:
    """vLLM's output row -> the five labels' log-probabilities, engine columns dropped."""

    DROP = ("messages", "prompt", "sampling_params", "generated_text", "generated_tokens", "num_generated_tokens",
            "num_input_tokens", "prompt_token_ids", "logprobs", "prompt_logprobs", "metrics", "embeddings",
            "tokenized_prompt", "request_id", "time_taken_llm", "params", "batch_uuid", "time_taken")

    def __init__(self, profile: JudgeProfile):
        self.labels = list(profile.labels)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        lps = row.get("logprobs") or []
        first = lps[0] if len(lps) else {}
        out = {k: v for k, v in row.items() if k not in self.DROP}
        out[LABEL_LOGPROBS] = label_logprobs_from_tokens(
            {str(v.get("decoded_token", "")): float(v.get("logprob", -math.inf)) for v in _values(first)}, self.labels)
        out[JUDGE_ERROR] = None
        return out


def _values(d: Any) -> list[dict[str, Any]]:
    if isinstance(d, dict):
        return [v for v in d.values() if isinstance(v, dict)]
    return []


def build_vllm_processor(j: VllmJudgeConfig, profile: JudgeProfile, concurrency: Any) -> tuple[Any, str]:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    model = judge_model_name(j, profile)
    res = j.resources
    engine = {"max_model_len": j.n_ctx, "enable_prefix_caching": True, **j.vllm_engine_kwargs}
    if j.dtype != "auto":
        engine.setdefault("dtype", j.dtype)
    placement = None
    if res.num_gpus:
        # Without a bundle Ray gives each engine a whole GPU (its "uni" executor), and a
        # judge meant to share one GPU with Whisper would wait for it forever.
        placement = {"bundle_per_worker": {"GPU": res.num_gpus, "CPU": res.num_cpus or 1}}
        if res.num_gpus < 1:
            engine.setdefault("gpu_memory_utilization", 0.9 * res.num_gpus)
    proc_config = vLLMEngineProcessorConfig(
        model_source=resolve_model(model),
        engine_kwargs=engine,
        batch_size=res.batch_size,
        concurrency=concurrency,
        should_continue_on_error=True,
        placement_group_config=placement,
        chat_template_stage=profile.style == "chat",
        tokenize_stage=True,
        detokenize_stage=False,
    )
    return build_processor(proc_config, preprocess=VllmJudgeRequest(profile),
                           postprocess=VllmJudgeResult(profile)), model


JUDGE_BACKENDS.register(
    "vllm", config=VllmJudgeConfig,
    engine=Engine("vLLM", ("vllm", "torch"), False, "check vLLM's install for this GPU"),
)(ProcessorJudge("vllm", build_vllm_processor))
