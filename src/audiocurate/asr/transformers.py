"""Hugging Face transformers Whisper: any checkpoint (tiny ... large-v3-turbo) on GPU, fp16/bf16.

Throughput on a GPU comes from large batches and from keeping the CPU out of the way: the
log-mel features of a batch are computed on the GPU (transformers' own torch STFT), the encoder
runs once per batch, and `generate` decodes the batch together. Clips longer than 30 s use the
same windows as the faster-whisper backend, each decoded by transformers' sequential long-form
generation with timestamps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..models import resolve_model
from . import Segment, Transcription, compression_ratio
from .windows import iter_windows

if TYPE_CHECKING:
    from ..config import AsrConfig

_WINDOW_S = 30.0


class TransformersWhisperTranscriber:
    """`WhisperForConditionalGeneration` behind the `Transcriber` protocol."""

    def __init__(self, config: "AsrConfig"):
        import torch
        from transformers import AutoProcessor, WhisperForConditionalGeneration

        self.torch = torch
        self.config = config
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype_name = config.compute_type
        if dtype_name == "default":
            dtype_name = "float16" if self.device.type == "cuda" else "float32"
        self.dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
        path = resolve_model(config.model)
        self.model_name = config.model
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = WhisperForConditionalGeneration.from_pretrained(
            path, **dtype_kwarg(self.dtype), attn_implementation=config.attn_implementation
        ).to(self.device).eval()
        self.sample_rate = self.processor.feature_extractor.sampling_rate
        on_gpu = config.features_on_device == "gpu" or (config.features_on_device == "auto" and self.device.type == "cuda")
        self.feature_device = str(self.device) if on_gpu else "cpu"
        tok = self.processor.tokenizer
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))
        self.no_speech_id = _first_token_id(tok, ("<|nospeech|>", "<|nocaptions|>"))
        self.sot_id = tok.convert_tokens_to_ids("<|startoftranscript|>")

    # ---- public ------------------------------------------------------------------------------
    def transcribe_batch(self, clips: Sequence[np.ndarray]) -> list[Transcription]:
        results: list[Transcription | None] = [None] * len(clips)
        short = [i for i, c in enumerate(clips) if len(c) <= _WINDOW_S * self.sample_rate]
        for i in sorted(set(range(len(clips))) - set(short)):
            results[i] = self._transcribe_long(clips[i])
        if short:
            for i, r in zip(short, self._transcribe_short([clips[i] for i in short])):
                results[i] = r
        return results  # type: ignore[return-value]

    # ---- short clips: one batched pass -------------------------------------------------------
    def _features(self, waves: list[np.ndarray], long_form: bool = False) -> Any:
        if not long_form and self.feature_device != "cpu":
            return {"input_features": log_mel_on_device(waves, self.processor.feature_extractor, self.device).to(self.dtype)}
        kwargs: dict[str, Any] = {"sampling_rate": self.sample_rate, "return_tensors": "pt",
                                  "device": self.feature_device}
        if long_form:
            kwargs.update(truncation=False, padding="longest", return_attention_mask=True)
        feats = self.processor.feature_extractor(waves, **kwargs)
        out = {"input_features": feats["input_features"].to(self.device, self.dtype)}
        if long_form:
            out["attention_mask"] = feats["attention_mask"].to(self.device)
        return out

    def _generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"num_beams": self.config.beam_size,
                              "max_new_tokens": self.config.max_new_tokens,
                              "return_dict_in_generate": True, "output_scores": True}
        if self.config.min_new_tokens:
            kw["min_new_tokens"] = self.config.min_new_tokens
        if self.multilingual:  # English-only checkpoints refuse task and language
            kw["task"] = "transcribe"
            if self.config.language:
                kw["language"] = self.config.language
        return kw

    def _transcribe_short(self, clips: list[np.ndarray]) -> list[Transcription]:
        torch = self.torch
        waves = clips if self.feature_device != "cpu" else [c.astype(np.float32) / 32768.0 for c in clips]
        with torch.inference_mode():
            inputs = self._features(waves)
            encoder = self.model.get_encoder()(inputs["input_features"])
            languages = self._languages(inputs["input_features"]) if self.multilingual and not self.config.language else None
            no_speech = self._no_speech(encoder)
            out = self.model.generate(encoder_outputs=encoder, **self._generate_kwargs(),
                                      **({"language": languages} if languages else {}))
            logprobs = self._avg_logprobs(out)
        texts = self.processor.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
        results = []
        for i, (text, wave) in enumerate(zip(texts, waves)):
            text = text.strip()
            n_tok = len(self.processor.tokenizer(text, add_special_tokens=False).input_ids) if text else 0
            seg = Segment(text, 0.0, len(wave) / self.sample_rate, logprobs[i], no_speech[i], n_tok)
            lang = languages[i] if languages else (self.config.language or "en")
            results.append(Transcription.from_segments([seg] if text else [], lang) if text else
                           Transcription("", lang, math.nan, no_speech[i], 0.0, []))
        return results

    def _no_speech(self, encoder: Any) -> list[float]:
        """P(<|nospeech|>) right after <|startoftranscript|>, as Whisper defines it."""
        if self.no_speech_id is None:
            return [math.nan] * encoder.last_hidden_state.shape[0]
        torch = self.torch
        b = encoder.last_hidden_state.shape[0]
        start = torch.full((b, 1), self.sot_id, device=self.device, dtype=torch.long)
        logits = self.model(encoder_outputs=encoder, decoder_input_ids=start).logits[:, -1].float()
        return torch.softmax(logits, -1)[:, self.no_speech_id].tolist()

    def _avg_logprobs(self, out: Any) -> list[float]:
        if getattr(out, "sequences_scores", None) is not None:
            return out.sequences_scores.float().tolist()
        scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).float()
        pad = self.processor.tokenizer.pad_token_id
        gen = out.sequences[:, -scores.shape[1]:]
        valid = (gen != pad) & torch_isfinite(self.torch, scores)
        sums = (scores.masked_fill(~valid, 0.0)).sum(-1)
        counts = valid.sum(-1).clamp(min=1)
        return (sums / counts).tolist()

    def _languages(self, features: Any) -> list[str]:
        ids = self.model.detect_language(input_features=features)
        tokens = self.processor.tokenizer.convert_ids_to_tokens(ids.tolist())
        return [t.strip("<|>") for t in tokens]

    # ---- long clips: windows, each decoded long-form with timestamps ---------------------------
    def _transcribe_long(self, pcm: np.ndarray) -> Transcription:
        torch = self.torch
        segments: list[Segment] = []
        language = self.config.language
        for offset, window in iter_windows(pcm, self.sample_rate, self.config.chunk_s):
            with torch.inference_mode():
                inputs = self._features([window], long_form=True)
                kw = self._generate_kwargs()
                kw.pop("max_new_tokens", None)
                kw.update(return_timestamps=True, condition_on_prev_tokens=False, return_segments=True)
                out = self.model.generate(**inputs, **kw)
            length = len(window) / self.sample_rate
            for seg in _segments_of(out):
                text = self.processor.tokenizer.decode(seg["tokens"], skip_special_tokens=True).strip()
                if text:  # predicted timestamps can overshoot the window's end
                    start, end = (min(float(seg[k]), length) for k in ("start", "end"))
                    segments.append(Segment(text, offset + start, offset + end, math.nan, math.nan, len(seg["tokens"])))
        tr = Transcription.from_segments(segments, language or "en")
        tr.compression_ratio = compression_ratio(tr.text)
        return tr


def log_mel_on_device(clips: list[np.ndarray], extractor: Any, device: Any) -> Any:
    """Whisper's log-mel features of a batch, computed on `device` from 16-bit samples.

    The same computation as the feature extractor (its own mel filter bank, STFT size, hop and
    normalisation), but the 30 s zero-padding and the int16-to-float conversion happen on the
    GPU: padding 512 clips in float32 on the CPU costs more than the GPU's whole forward pass.
    """
    import torch

    n_samples = extractor.n_samples
    batch = torch.zeros((len(clips), n_samples), dtype=torch.int16, pin_memory=torch.cuda.is_available())
    for i, c in enumerate(clips):
        n = min(len(c), n_samples)
        batch[i, :n] = torch.from_numpy(np.ascontiguousarray(c[:n]))
    wave = batch.to(device, non_blocking=True).float().div_(32768.0)
    window = torch.hann_window(extractor.n_fft, device=device)
    stft = torch.stft(wave, extractor.n_fft, extractor.hop_length, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    filters = torch.as_tensor(extractor.mel_filters, device=device, dtype=torch.float32)
    log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0


def torch_isfinite(torch: Any, x: Any) -> Any:
    return torch.isfinite(x)


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """`dtype=` since transformers 4.56, `torch_dtype=` before."""
    import transformers
    from packaging.version import Version

    return {"dtype": dtype} if Version(transformers.__version__) >= Version("4.56") else {"torch_dtype": dtype}


def _segments_of(out: Any) -> list[dict]:
    segs = out.get("segments") if isinstance(out, dict) else getattr(out, "segments", None)
    if segs:
        return segs[0]
    raise RuntimeError("transformers' long-form generation returned no segments")


def _first_token_id(tokenizer: Any, candidates: tuple[str, ...]) -> int | None:
    unk = tokenizer.unk_token_id
    for tok in candidates:
        i = tokenizer.convert_tokens_to_ids(tok)
        if i is not None and i != unk:
            return int(i)
    return None
