"""`judge.backend: http`: any OpenAI-compatible server (vLLM serve, llama.cpp server, a hosted
API) through Ray's `HttpRequestProcessorConfig`, with Ray's retries and rate limit.

A request the server refuses (an error body) becomes an error row; a server that stays
unreachable after the retries stops the run. The bearer token is read from the environment in
the worker that sends the requests (`_http_session`); no object Ray pickles holds it.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Literal, Optional

from pydantic import Field

from ..core.settings import SPEED_ONLY
from ..engines import Engine
from .backends import JUDGE_BACKENDS
from .processors import (JUDGE_ERROR, LABEL_LOGPROBS, TOP_LOGPROBS, ProcessorJudge, is_active,
                         judge_model_name, label_logprobs_from_tokens, sent, skipped)
from .profile import JudgeProfile
from .settings import JudgeSettings


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


class HttpJudgeRequest:
    """Row -> an OpenAI-compatible request body (chat or completions, as the profile says)."""

    def __init__(self, profile: JudgeProfile, model: str, extra: Optional[dict[str, Any]] = None):
        self.profile = profile
        self.model = model
        self.extra = extra or {}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if not is_active(row):
            return skipped(row)
        text, language = row.get("transcript") or "", row.get("language")
        if self.profile.style == "chat":
            payload = {"model": self.model, "messages": self.profile.messages(text, language), "max_tokens": 1,
                       "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        else:
            payload = {"model": self.model, "prompt": self.profile.prefix() + self.profile.suffix(text, language),
                       "max_tokens": 1, "temperature": 0.0, "logprobs": TOP_LOGPROBS}
        payload.update(self.extra)
        return {**sent(row), "payload": payload}


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


def build_http_processor(j: HttpJudgeConfig, profile: JudgeProfile, concurrency: Any) -> tuple[Any, str]:
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    model = judge_model_name(j, profile)
    res = j.resources
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


JUDGE_BACKENDS.register(
    "http", config=HttpJudgeConfig,
    engine=Engine("an OpenAI-compatible server", (), False, "check the server"),
)(ProcessorJudge("http", build_http_processor))
