"""Speech recognition: one `Transcriber` protocol, one class per engine.

A transcriber is created once per Ray actor and turns 16 kHz mono 16-bit clips into
`Transcription`s. Clips of any length are transcribed whole: long ones window by window
(`asr.windows`), so memory follows the window, never the recording.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence

import numpy as np

from ..core.registry import Registry

if TYPE_CHECKING:
    from .settings import AsrSettings


@dataclass
class Segment:
    text: str
    start_s: float
    end_s: float
    avg_logprob: float
    no_speech_prob: float
    n_tokens: int
    words: list[dict] = field(default_factory=list)  # {word, start_s, end_s, probability}, in the clip


@dataclass
class Transcription:
    """A clip's transcript with Whisper's own confidence signals, aggregated over segments."""

    text: str
    language: str | None
    avg_logprob: float  # token-weighted mean over segments; NaN when nothing was decoded
    no_speech_prob: float  # duration-weighted mean over segments; NaN when nothing was decoded
    compression_ratio: float  # of the whole transcript, as Whisper defines it
    segments: list[Segment] = field(default_factory=list, repr=False)
    language_prob: float = math.nan  # the detector's probability of `language` (when detected)

    @property
    def words(self) -> list[dict]:
        return [w for s in self.segments for w in s.words]

    @classmethod
    def from_segments(cls, segments: list[Segment], language: str | None) -> "Transcription":
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        tokens = sum(s.n_tokens for s in segments)
        durations = [max(s.end_s - s.start_s, 1e-3) for s in segments]
        avg_logprob = (sum(s.avg_logprob * s.n_tokens for s in segments) / tokens) if tokens else math.nan
        no_speech = (sum(s.no_speech_prob * d for s, d in zip(segments, durations)) / sum(durations)) if segments else math.nan
        return cls(text, language, avg_logprob, no_speech, compression_ratio(text), segments)


def detection_pieces(n_samples: int, piece: int, pieces: int) -> list[int]:
    """Starts of up to `pieces` pieces of `piece` samples spread evenly over `n_samples`, first
    piece at the start and last at the end, for spoken language ID beyond the first 30 s."""
    count = 1 if n_samples <= piece else min(pieces, math.ceil(n_samples / piece))
    return [int(x) for x in np.linspace(0, max(n_samples - piece, 0), count)]


def mean_distribution(distributions: Sequence[dict[str, float]], weights: Sequence[float] | None = None) -> dict[str, float]:
    """The (weighted) mean of language probability distributions."""
    weights = list(weights) if weights is not None else [1.0] * len(distributions)
    total = sum(weights) or 1.0
    mean: dict[str, float] = {}
    for w, probs in zip(weights, distributions):
        for lang, p in probs.items():
            mean[lang] = mean.get(lang, 0.0) + p * w / total
    return mean


def clip_language(windows: Sequence[tuple[float, dict[str, float]]]) -> tuple[str, float]:
    """A clip's language and its probability from its windows' (seconds, probabilities):
    the duration-weighted mean distribution's most likely language."""
    mean = mean_distribution([p for _, p in windows], [s for s, _ in windows])
    language = max(mean, key=mean.__getitem__)
    return language, mean[language]


class Transcriber(Protocol):
    """An ASR engine behind the pipeline's transcribe stage."""

    model_name: str

    def transcribe_batch(self, clips: Sequence[np.ndarray]) -> list[Transcription]:
        """Transcribe 16 kHz mono int16 clips; one result per clip, in order."""
        ...


def compression_ratio(text: str) -> float:
    """gzip ratio of the text, Whisper's repetition signal (high = looping output)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


class ActorTranscriber:
    """Base of ASR engines created once per Ray actor: `cls(config)`, then `transcribe_batch`.
    How a backend runs is a fact it declares (`runs_as`); the planner (`plan.py`) turns it into
    the pipeline's transcribe step. `asr.backend: none` runs as a task instead."""

    runs_as: ClassVar[str] = "actor"


# ASR engines by `asr.backend`. Each backend module registers its class (`cls(config)`), its config
# class and its engine: `@ASR_BACKENDS.register("name", config=..., engine=engines.Engine(...))`.
ASR_BACKENDS: Registry[Any] = Registry("ASR backend", lazy={
    "faster_whisper": "audiocurate.asr.faster_whisper",
    "transformers": "audiocurate.asr.transformers",
    "none": "audiocurate.asr.existing",
})


def make_transcriber(config: "AsrSettings") -> Transcriber:
    """The configured engine; heavy imports happen in it, once per actor."""
    return ASR_BACKENDS.get(config.backend)(config)
