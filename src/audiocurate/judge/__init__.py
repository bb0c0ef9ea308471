"""The educational-value judge: one `Judge` protocol, one class per engine.

A judge never generates text when the answer is one of five labels: one forward pass over the
prompt, then the five label tokens' logits give the answer and its probabilities p1..p5.
`edu_score_mean` is the expected score sum(k * pk). `edu_score` is the profile's calibrated map
of that mean onto 1..5 where the profile ships one (small models whose argmax is always "1"),
else the argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Protocol, Sequence

import numpy as np

from . import gemma_weights  # noqa: F401  (registers embedded:gemma3-270m)
from .profile import JudgeProfile, load_judge_profile

if TYPE_CHECKING:
    from .settings import JudgeSettings

__all__ = ["Judge", "JudgeScore", "JudgeProfile", "load_judge_profile", "make_judge", "score_from_logits"]


@dataclass
class JudgeScore:
    score: Optional[int]  # 1..5; None when the row failed
    mean: float  # sum(k * pk)
    probs: list[float] = field(default_factory=list)  # p1..p5
    truncated: bool = False
    error: Optional[str] = None

    @classmethod
    def failed(cls, reason: str) -> "JudgeScore":
        return cls(None, math.nan, [], False, reason)


class Judge(Protocol):
    """Scores transcripts' educational value from 1 to 5."""

    model_name: str

    def score_batch(self, texts: Sequence[str], languages: Optional[Sequence[Optional[str]]] = None) -> list[JudgeScore]:
        """One score per text, in order; a text the model cannot take fails alone. `languages`
        (the rows' `language` column, codes or names; None where unknown) is stated in the
        prompt by profiles with a `language_line`, and ignored by the others."""
        ...


def score_from_logits(label_logits: np.ndarray, profile: JudgeProfile, truncated: bool = False,
                      n_chars: Optional[int] = None) -> JudgeScore:
    """Softmax over the five labels' logits (or log-probabilities) to the score; `n_chars` (the
    cleaned transcript's length) for calibrations that account for length."""
    z = np.asarray(label_logits, dtype=np.float64)
    if not np.isfinite(z).any():
        return JudgeScore.failed("the model gave no probability to any of the five labels")
    z = np.where(np.isfinite(z), z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    mean = float(p @ np.arange(1, len(p) + 1))
    return JudgeScore(profile.score(mean, p, n_chars), mean, [float(x) for x in p], truncated)


def make_judge(config: "JudgeSettings") -> Judge:
    """The configured per-actor judge (llama.cpp, transformers). vLLM and HTTP judges run as
    `ray.data.llm` processors instead; see `judge.processors`, `judge.vllm`, `judge.http`."""
    from .backends import judge_backend

    backend = judge_backend(config.backend)
    if backend.runs_as != "actor":
        raise ValueError(f"judge backend {config.backend!r} runs as a {backend.runs_as}, not inside a judge actor")
    return backend(config, load_judge_profile(config.profile))
