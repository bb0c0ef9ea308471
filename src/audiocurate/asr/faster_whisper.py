"""faster-whisper (CTranslate2): the CPU default, also fast on GPUs."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, Optional, Sequence

import numpy as np
from pydantic import Field

from ..models import resolve_model
from . import ASR_BACKENDS, ActorTranscriber, Segment, Transcription
from ..core.settings import SPEED_ONLY
from .settings import AsrSettings
from .windows import iter_windows


class FasterWhisperConfig(AsrSettings):
    """`asr.backend: faster_whisper`: Whisper through CTranslate2, on CPU or GPU."""

    backend: Literal["faster_whisper"] = "faster_whisper"
    word_timestamps: bool = Field(False, description="Word-level timestamps (a `words` column: word, start_s, "
                                  "end_s, probability, in the clip), from faster-whisper's cross-attention alignment.")
    threads: int = Field(1, ge=1, json_schema_extra=SPEED_ONLY, description="Intra-op threads per actor. One is the "
                         "most work per core (the planner then runs one actor per core): two actors of one "
                         "thread beat one actor of two threads on 2 cores.")
    compression_ratio_threshold: float = Field(
        2.4, description="Fallback above this gzip ratio of the text (faster-whisper's measure).")
    fallback_min_avg_logprob: Optional[float] = Field(
        None, description="Run Whisper's temperature fallback on a window only when a first pass at the first "
        "temperature scores at least this average log-probability. Speech in a language the model does not know "
        "(an English-only model on Czech) fails every threshold and otherwise decodes up to six times, only to be "
        "rejected by `filters.language.min_avg_logprob`; set both to the same value (`longform`: -0.9). None: "
        "the fallback always runs, as in Whisper.")

    default_compute_type: ClassVar[dict[str, str]] = {"cpu": "int8", "cuda": "float16"}


@ASR_BACKENDS.register("faster_whisper")
class FasterWhisperTranscriber(ActorTranscriber):
    """Whisper through CTranslate2; one model per actor, `threads` intra-op threads."""

    def __init__(self, config: FasterWhisperConfig):
        from faster_whisper import WhisperModel

        self.config = config
        device, compute_type = config.resolved_device(), config.resolved_precision()
        self.model_name = config.model
        self.model = WhisperModel(
            resolve_model(config.model),
            device=device,
            compute_type=compute_type,
            cpu_threads=config.threads,
            num_workers=1,
        )
        self.sample_rate = self.model.feature_extractor.sampling_rate

    def transcribe_batch(self, clips: Sequence[np.ndarray]) -> list[Transcription]:
        return [self.transcribe(pcm) for pcm in clips]

    def transcribe(self, pcm: np.ndarray) -> Transcription:
        import ctranslate2

        # Whisper's temperature fallback samples; a fixed seed per clip makes a clip's
        # transcript independent of batching and of which worker (or resumed run) decodes it.
        ctranslate2.set_random_seed(0)
        segments: list[Segment] = []
        language = self.config.language
        previous = ""
        language_prob = float("nan")
        for offset, window in iter_windows(pcm, self.sample_rate, self.config.chunk_s):
            # Detected on the first window and kept for the rest (as the transformers backend does).
            result, info = self._window(window, previous, language)
            for s in result:
                words = [{"word": w.word.strip(), "start_s": offset + w.start, "end_s": offset + w.end,
                          "probability": w.probability} for w in (s.words or [])]
                segments.append(Segment(s.text, offset + s.start, offset + s.end, s.avg_logprob,
                                        s.no_speech_prob, len(s.tokens), words))
            if math.isnan(language_prob):  # the first window's language, and how sure of it
                language, language_prob = info.language or language, info.language_probability
            if segments:
                previous = " ".join(segments[-1].text.split()[-24:])
        tr = Transcription.from_segments(segments, language)
        tr.language_prob = language_prob
        return tr

    def _window(self, window: np.ndarray, previous: str, language: Optional[str]) -> tuple[list[Any], Any]:
        """One window, with Whisper's temperature fallback; with `fallback_min_avg_logprob`,
        a first pass at the first temperature decides whether the fallback is worth running."""
        gate = self.config.fallback_min_avg_logprob
        if gate is None:
            return self._decode(window, previous, self.config.temperatures, language)
        first, info = self._decode(window, previous, self.config.temperatures[:1], language)
        tokens = sum(len(s.tokens) for s in first)
        mean = sum(s.avg_logprob * len(s.tokens) for s in first) / tokens if tokens else 0.0
        wanted = any(s.avg_logprob < self.config.log_prob_threshold
                     or s.compression_ratio > self.config.compression_ratio_threshold for s in first)
        if not wanted or mean < gate or len(self.config.temperatures) == 1:
            return first, info  # fine as it is, or not this model's language: no fallback
        import ctranslate2

        ctranslate2.set_random_seed(0)
        return self._decode(window, previous, self.config.temperatures, language)

    def _decode(self, window: np.ndarray, previous: str, temperatures: Sequence[float],
                language: Optional[str]) -> tuple[list[Any], Any]:
        result, info = self.model.transcribe(
            window,
            language=language,
            beam_size=self.config.beam_size,
            # Timestamps on: tiny.en without them stops early inside each 30 s window.
            without_timestamps=False,
            condition_on_previous_text=True,
            # Carry the last words over a window cut so the next window continues the text.
            initial_prompt=previous or None,
            vad_filter=False,
            temperature=list(temperatures),
            compression_ratio_threshold=self.config.compression_ratio_threshold,
            log_prob_threshold=self.config.log_prob_threshold,
            no_speech_threshold=self.config.no_speech_threshold,
            word_timestamps=self.config.word_timestamps,
        )
        return list(result), info
