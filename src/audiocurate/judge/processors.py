"""vLLM and HTTP judges through Ray's own `ray.data.llm` processors.

* `vllm`: `vLLMEngineProcessorConfig` + `build_processor` (the tutorial's `build_llm_processor`
  is gone in Ray 2.60). One token is generated, constrained by vLLM's structured outputs to the
  five labels (`structured_outputs={"choice": [...]}`; the tutorial's `guided_decoding` is
  deprecated), and the first token's top log-probabilities give p1..p5. Rows the engine fails
  on come back with `__inference_error__` (`should_continue_on_error`) and become error rows,
  unless the failure is the engine's (`core.faults`: a dead engine, out of memory, every row of a
  block failing the same way): then the block fails with `EngineFault`, and no row is lost.
* `http`: `HttpRequestProcessorConfig` against any OpenAI-compatible server (vLLM serve,
  llama.cpp server, a hosted API), with Ray's retries and rate limit. A request the server
  refuses (an error body) becomes an error row; a server that stays unreachable after the
  retries stops the run.

Rows that failed or were rejected upstream cost no request: the request functions mark them
with `__inference_error__` (`SKIPPED`), which every stage of Ray's processors passes by
untouched (`StatefulStageUDF`), and the result stage leaves them as they came.

The HTTP judge's bearer token is read from the environment in the worker that sends the
requests (`_http_session`); no object Ray pickles holds it.
"""

from __future__ import annotations

import functools

import math
import os
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np
import pyarrow as pa
from pydantic import Field

from .. import contract as C
from ..core.faults import EngineFault, classify_failure_texts
from ..core.settings import SPEED_ONLY
from ..core.stage import Outcome, Stage
from ..models import resolve_model
from . import score_from_logits
from .backends import JUDGE_BACKENDS
from .profile import JudgeProfile, load_judge_profile
from .settings import JudgeSettings

if TYPE_CHECKING:
    from ..config import PipelineConfig

LABEL_LOGPROBS = "_judge_label_logprobs"
JUDGE_ERROR = "_judge_error"
INFERENCE_ERROR = "__inference_error__"
TOP_LOGPROBS = 20



class VllmJudgeConfig(JudgeSettings):
    """`judge.backend: vllm`: vLLM on GPUs, through `ray.data.llm`."""

    backend: Literal["vllm"] = "vllm"
    dtype: str = Field("auto", description="Weights dtype (`auto`, `float16`, `bfloat16`, `float32`).")
    vllm_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=SPEED_ONLY, description="Extra engine arguments (`max_model_len`, "
        "`gpu_memory_utilization`, `tensor_parallel_size`...)."
    )


class HttpJudgeConfig(JudgeSettings):
    """`judge.backend: http`: any OpenAI-compatible completions server, through `ray.data.llm`."""

    backend: Literal["http"] = "http"
    url: str = Field(..., json_schema_extra=SPEED_ONLY, description="The server's "
                               "chat/completions URL (moving the server keeps a run resumable).")
    api_key_env: Optional[str] = Field(None, json_schema_extra=SPEED_ONLY,
                                       description="Environment variable holding a bearer token. Only the "
                                       "name is configuration: it is added to `ray.forward_env`, and the token "
                                       "is read from it in the worker that sends the requests.")
    max_retries: int = Field(3, ge=0, json_schema_extra=SPEED_ONLY,
                             description="Retries per request on errors and 429/5xx.")
    qps: Optional[int] = Field(None, ge=1, json_schema_extra=SPEED_ONLY, description="Most "
                               "requests per second per worker, a whole number (Ray's limiter counts "
                               "whole requests); None sends each worker's requests one after another.")
    timeout_s: float = Field(60.0, gt=0, json_schema_extra=SPEED_ONLY,
                             description="Seconds one request may take before it counts as failed and is retried.")
    http_extra: dict[str, Any] = Field(
        default_factory=dict, description="Fields merged into every request body, for a "
        "server's own way of constraining the answer (vLLM: `structured_outputs: {choice: [...]}`; "
        "llama.cpp: `grammar`). The score never depends on them: it is read from the five labels' "
        "log-probabilities.")


# What a row settled upstream carries through the processor instead of a request. Ray's
# stages skip a row whose `__inference_error__` is set, and its postprocess hands it on as is.
SKIPPED = "audiocurate: settled before the judge, not sent"


def _active(row: dict[str, Any]) -> bool:
    return row.get(C.ERROR_STAGE) is None and row.get(C.DROP_REASON) is None


def _skipped(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, INFERENCE_ERROR: SKIPPED}


def _sent(row: dict[str, Any]) -> dict[str, Any]:
    """A row that gets a request. Its `__inference_error__` is set empty: a row without the key
    shares a block with skipped ones, where Arrow fills it with null, which Ray's stages take
    for an error (`!= ""`) and skip too."""
    return {**row, INFERENCE_ERROR: ""}


class VllmJudgeRequest:
    """Row -> a vLLM request: the profile's prompt, one constrained token, its log-probabilities."""

    def __init__(self, profile: JudgeProfile):
        self.profile = profile

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if not _active(row):
            return _skipped(row)
        text, language = row.get("transcript") or "", row.get("language")
        out = _sent(row)
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


class HttpJudgeRequest:
    """Row -> an OpenAI-compatible request body (chat or completions, as the profile says)."""

    def __init__(self, profile: JudgeProfile, model: str, extra: Optional[dict[str, Any]] = None):
        self.profile = profile
        self.model = model
        self.extra = extra or {}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if not _active(row):
            return _skipped(row)
        text, language = row.get("transcript") or "", row.get("language")
        if self.profile.style == "chat":
            payload = {"model": self.model, "messages": self.profile.messages(text, language), "max_tokens": 1,
                       "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        else:
            payload = {"model": self.model, "prompt": self.profile.prefix() + self.profile.suffix(text, language),
                       "max_tokens": 1, "temperature": 0.0, "logprobs": TOP_LOGPROBS}
        payload.update(self.extra)
        return {**_sent(row), "payload": payload}


class HttpJudgeResult:
    """An OpenAI-style response -> the labels' log-probabilities, or the server's refusal."""

    def __init__(self, profile: JudgeProfile):
        self.labels = list(profile.labels)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        resp = row.get("http_response") or {}
        out = {k: v for k, v in row.items() if k not in ("payload", "http_response")}
        out[LABEL_LOGPROBS], out[JUDGE_ERROR] = None, None
        # Rows pass through Arrow, whose structs give every row every field: test values, not keys.
        if resp.get("error") or not resp.get("choices"):
            err = resp.get("error") or resp
            msg = err.get("message") if isinstance(err, dict) else str(err)
            out[JUDGE_ERROR] = f"judge server refused the request: {msg}"[:500]
            return out
        out[LABEL_LOGPROBS] = label_logprobs_from_tokens(top_logprobs_of(resp["choices"][0]), self.labels)
        return out


def top_logprobs_of(choice: dict[str, Any]) -> dict[str, float]:
    """{token: logprob} of the first generated token, from a chat or a completions response."""
    lp = choice.get("logprobs") or {}
    if lp.get("content") is not None and len(lp["content"]):  # chat completions
        first = lp["content"][0]
        entries = {e["token"]: e["logprob"] for e in first.get("top_logprobs") or []}
        entries.setdefault(first.get("token", ""), first.get("logprob", -math.inf))
        return entries
    tops = lp.get("top_logprobs")  # completions
    if tops is not None and len(tops):
        return {str(k): float(v) for k, v in (tops[0] or {}).items() if v is not None}
    return {}


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

    def __init__(self, config: "PipelineConfig", model_name: str):
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


def build_judge_processor(config: PipelineConfig, concurrency: Any) -> tuple[Any, str]:
    """The `ray.data.llm` processor for the configured vLLM or HTTP judge, and its model name."""
    from ray.data.llm import HttpRequestProcessorConfig, build_processor, vLLMEngineProcessorConfig

    j = config.judge
    profile = load_judge_profile(j.profile)
    model = j.model or profile.model
    res = j.resources
    if j.backend == "vllm":
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
    if j.backend == "http":
        if j.api_key_env and not os.environ.get(j.api_key_env):
            raise ValueError(f"judge.api_key_env={j.api_key_env!r} is not set in the environment")
        proc_config = HttpRequestProcessorConfig(
            url=j.url, qps=j.qps, max_retries=j.max_retries,
            # the variable's name travels, its value is read where the requests are sent
            session_factory=functools.partial(_http_session, j.timeout_s, j.api_key_env),
            batch_size=res.batch_size, concurrency=concurrency if isinstance(concurrency, int) else concurrency[1],
        )
        return build_processor(proc_config, preprocess=HttpJudgeRequest(profile, model, j.http_extra),
                               postprocess=HttpJudgeResult(profile)), model
    raise ValueError(f"judge backend {j.backend!r} has no ray.data.llm processor")


def _http_session(timeout_s: float, api_key_env: Optional[str] = None) -> Any:
    """The HTTP judge's client session, in the worker: `judge.timeout_s` per request, and the
    bearer token from this process's `api_key_env` (`ray.forward_env` brings it to workers)."""
    import aiohttp

    headers = {}
    if api_key_env:
        token = os.environ.get(api_key_env)
        if not token:
            raise RuntimeError(f"judge.api_key_env={api_key_env!r} is not set in the judge's Ray worker on "
                               f"{_hostname()}; list it in ray.forward_env")
        headers["Authorization"] = f"Bearer {token}"
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s), headers=headers)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def apply_processor_judge(ds: Any, config: PipelineConfig, concurrency: Any) -> Any:
    processor, model = build_judge_processor(config, concurrency)
    ds = processor(ds)
    return ds.map_batches(ProcessorJudgeResultStage(config, model), batch_format="pyarrow",
                          udf_modifying_row_count=False, num_cpus=0.25)


def _values(d: Any) -> list[dict[str, Any]]:
    if isinstance(d, dict):
        return [v for v in d.values() if isinstance(v, dict)]
    return []


class ProcessorJudge:
    """A judge backend that runs as a `ray.data.llm` processor (vllm, http)."""

    runs_as = "processor"

    def __init__(self, name: str):
        self.name = name

    def apply(self, ds: Any, config: PipelineConfig, concurrency: Any, cpu_scale: float = 1.0) -> Any:
        return apply_processor_judge(ds, config, concurrency)


JUDGE_BACKENDS.register("vllm")(ProcessorJudge("vllm"))
JUDGE_BACKENDS.register("http")(ProcessorJudge("http"))
