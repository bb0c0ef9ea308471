"""Hugging Face transformers Whisper: any checkpoint (tiny ... large-v3-turbo) on GPU, fp16/bf16.

Throughput on a GPU comes from large batches and from keeping the CPU out of the way: the
log-mel features of a batch are computed on the GPU (transformers' own torch STFT), the encoder
runs once per batch, and `generate` decodes the batch together. Clips longer than 30 s use the
same windows as the faster-whisper backend, each decoded by transformers' sequential long-form
generation with timestamps.
"""

from __future__ import annotations

import inspect
import math
from typing import Literal, Any, Sequence

import numpy as np
from pydantic import Field

from ..engines import Engine
from ..models import dtype_kwarg, resolve_model
from . import (ASR_BACKENDS, ActorTranscriber, Segment, Transcription, clip_language, compression_ratio,
               detection_pieces, mean_distribution)
from .settings import AsrSettings
from .windows import iter_windows

_WINDOW_S = 30.0


class TransformersAsrConfig(AsrSettings):
    """`asr.backend: transformers`: Hugging Face Whisper, fp16/bf16 on GPU."""

    backend: Literal["transformers"] = "transformers"
    token_compression_ratio_threshold: float = Field(
        1.35, description="Temperature fallback above this gzip ratio of the token ids "
        "(the value transformers recommends).")
    attn_implementation: str = Field("sdpa", description="Attention kernel.")
    max_new_tokens: int = Field(440, ge=1, description="Token budget per 30 s window.")
    min_new_tokens: int = Field(0, ge=0, description="Tokens decoded at least per clip "
                                "(benchmarks with random weights use it to decode a fixed length).")
    cudnn_attention: bool = Field(
        False, description="Let PyTorch's attention (SDPA) choose cuDNN's kernel. Off by default: "
        "on an H200 (torch 2.11) it made batched decoding of tiny 2.8x slower (608 against 1,685 "
        "clips/s at batch 1024), since cuDNN plans every new shape anew, and decoding makes one "
        "per step and per batch size. Flash, memory-efficient and math kernels stay allowed.")
    features_on_device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Where log-mel features are computed. `auto` uses "
        "the GPU when the model is there, so CPU preprocessing cannot starve it."
    )

@ASR_BACKENDS.register("transformers", config=TransformersAsrConfig, engine=Engine(
    "transformers (PyTorch)", ("transformers", "torch"), False, "reinstall PyTorch's published wheel for this machine"))
class TransformersWhisperTranscriber(ActorTranscriber):
    """`WhisperForConditionalGeneration` behind the `Transcriber` protocol."""

    # Beam 1 on short clips decodes in `_greedy`; False sends it through `generate` and
    # `_confidence` instead (the reference the tests and benchmarks/gpu_asr.py compare against).
    greedy_loop = True

    def __init__(self, config: TransformersAsrConfig):
        import torch
        from transformers import AutoProcessor, WhisperForConditionalGeneration

        self.torch = torch
        self.config = config
        self.device = torch.device(config.resolved_device())
        dtype_name = config.resolved_precision()
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
        gen = self.model.generation_config
        # Index tensors on the device once per actor, not a list copied over for every chunk.
        # The decoder's cache argument: `past_key_values` until transformers renamed it `cache`.
        self._cache_kwarg = ("cache" if "cache" in inspect.signature(self.model.forward).parameters
                             else "past_key_values")
        self.suppress, self.begin_suppress = (
            torch.tensor([t for t in getattr(gen, name, None) or [] if t >= 0], dtype=torch.long, device=self.device)
            for name in ("suppress_tokens", "begin_suppress_tokens"))

    # ---- public ------------------------------------------------------------------------------
    def transcribe_batch(self, clips: Sequence[np.ndarray]) -> list[Transcription]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernels = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        with sdpa_kernel(kernels + [SDPBackend.CUDNN_ATTENTION] * self.config.cudnn_attention):
            return self._transcribe(clips)

    def _transcribe(self, clips: Sequence[np.ndarray]) -> list[Transcription]:
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

    def _generate_kwargs(self, languages: list[str] | None = None) -> dict[str, Any]:
        kw: dict[str, Any] = {"num_beams": self.config.beam_size, "max_new_tokens": self.config.max_new_tokens}
        if self.config.min_new_tokens:
            kw["min_new_tokens"] = self.config.min_new_tokens
        if self.multilingual:  # English-only checkpoints refuse task and language
            kw["task"] = "transcribe"
            if languages or self.config.language:
                kw["language"] = languages or self.config.language
        return kw

    def _prompt_ids(self, batch: int, languages: list[str] | None) -> Any:
        """The decoder prompt Whisper generates after: <|startoftranscript|> [lang task] <|notimestamps|>."""
        tok = self.processor.tokenizer
        by_lang: dict[str, list[int]] = {}  # one lookup per language, not per row
        rows = []
        for i in range(batch):
            lang = ((languages[i] if languages else None) or self.config.language or "en") if self.multilingual else ""
            if lang not in by_lang:
                ids = [self.sot_id]
                if self.multilingual:
                    ids += [tok.convert_tokens_to_ids(f"<|{lang}|>"), tok.convert_tokens_to_ids("<|transcribe|>")]
                by_lang[lang] = ids + [tok.convert_tokens_to_ids("<|notimestamps|>")]
            rows.append(by_lang[lang])
        return self.torch.tensor(rows, device=self.device, dtype=self.torch.long)

    def _transcribe_short(self, clips: list[np.ndarray]) -> list[Transcription]:
        """One batch: features, one encoder pass, plain batched `generate`, then one
        teacher-forced decoder pass for Whisper's confidence signals (asking `generate` for
        per-step scores makes transformers split them per sample in Python, which at batch 512
        costs ten times the decoding itself)."""
        torch = self.torch
        waves = clips if self.feature_device != "cpu" else [c.astype(np.float32) / 32768.0 for c in clips]
        with torch.inference_mode():
            feats = self._features(waves)["input_features"]
            encoder = self.model.get_encoder()(feats)
            languages, language_probs = (self._languages(encoder) if self.multilingual and not self.config.language
                                         else (None, None))
            prompt = self._prompt_ids(len(clips), languages)
            if self.config.beam_size == 1 and self.greedy_loop:
                generated, no_speech, logprobs, n_tokens = self._greedy(encoder, prompt)
            else:
                generated = self.model.generate(encoder_outputs=encoder, **self._generate_kwargs(languages))
                if generated.shape[1] >= prompt.shape[1] and bool((generated[:, : prompt.shape[1]] == prompt).all()):
                    generated = generated[:, prompt.shape[1]:]  # some versions return the prompt too
                no_speech, logprobs, n_tokens = self._confidence(encoder, prompt, generated)
        texts = self.processor.tokenizer.batch_decode(generated, skip_special_tokens=True)
        results = []
        for i, (text, wave) in enumerate(zip(texts, clips)):
            text = text.strip()
            lang = languages[i] if languages else (self.config.language or "en")
            if not text:
                results.append(Transcription("", lang, math.nan, no_speech[i], 0.0, []))
                continue
            seg = Segment(text, 0.0, len(wave) / self.sample_rate, logprobs[i], no_speech[i], n_tokens[i])
            results.append(Transcription.from_segments([seg], lang))
        if language_probs or not self.multilingual:  # an English-only model is sure of its language
            for r, prob in zip(results, language_probs or [1.0] * len(results)):
                r.language_prob = prob
        return results

    def _greedy(self, encoder: Any, prompt: Any) -> tuple[Any, list, list, list]:
        """Greedy decoding of a batch (beam 1) with the confidence signals taken from the logits
        it already computes: what `generate` plus `_confidence` give, without the second decoder
        pass over the whole batch and without `generate`'s per-step machinery, which dominate
        a small model's time at large batches. The same masks as `generate`: suppressed tokens,
        begin-suppressed tokens at the first step, end-of-text until `min_new_tokens`."""
        torch = self.torch
        c = self.config
        eot = self.processor.tokenizer.eos_token_id
        batch = prompt.shape[0]
        cache = _encoder_decoder_cache()
        step_ids = prompt
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        total = torch.zeros(batch, dtype=torch.float32, device=self.device)
        n_text = torch.zeros(batch, dtype=torch.long, device=self.device)
        tokens = []
        no_speech: list[float] = [math.nan] * batch
        for step in range(c.max_new_tokens):
            logits = self.model(encoder_outputs=encoder, decoder_input_ids=step_ids, use_cache=True,
                                **{self._cache_kwarg: cache}).logits
            if step == 0 and self.no_speech_id is not None:
                no_speech = torch.softmax(logits[:, 0].float(), -1)[:, self.no_speech_id].tolist()
            scores = logits[:, -1].float()
            scores[:, self.suppress] = -math.inf
            if step == 0:
                scores[:, self.begin_suppress] = -math.inf
            logprobs = torch.log_softmax(scores, -1)
            if step < c.min_new_tokens:
                scores[:, eot] = -math.inf
            chosen = torch.where(done, eot, scores.argmax(-1))
            is_eot = chosen == eot
            # A row's end-of-text counts towards its score; the padding after it does not.
            total += torch.where(done, 0.0, logprobs.gather(-1, chosen[:, None]).squeeze(-1))
            n_text += (~done & ~is_eot).long()
            done |= is_eot
            tokens.append(chosen)
            if bool(done.all()):
                break
            step_ids = chosen[:, None]
        generated = torch.stack(tokens, 1)
        mean = total / (n_text + 1)
        avg = [m if n else math.nan for m, n in zip(mean.tolist(), n_text.tolist())]
        return generated, no_speech, avg, n_text.tolist()

    def _confidence(self, encoder: Any, prompt: Any, generated: Any, chunk: int = 256) -> tuple[list, list, list]:
        """P(<|nospeech|>) after <|startoftranscript|>, and Whisper's average log-probability
        of the generated text, from one forward pass.

        As in OpenAI Whisper and faster-whisper: log-probabilities over the tokens decoding may
        choose (suppressed tokens masked as `generate` masks them), summed over the text and its
        end-of-text, divided by the text's length + 1; so `avg_logprob` and the filters'
        thresholds mean the same on both backends."""
        torch = self.torch
        eot = self.processor.tokenizer.eos_token_id
        no_speech: list[float] = []
        avg: list[float] = []
        counts: list[int] = []
        p = prompt.shape[1]
        hidden = encoder.last_hidden_state
        for lo in range(0, generated.shape[0], chunk):
            gen = generated[lo:lo + chunk]
            # `generate` drops the end-of-text of the longest rows; score it for every row.
            gen = torch.cat([gen, torch.full_like(gen[:, :1], eot)], 1)
            full = torch.cat([prompt[lo:lo + chunk], gen], 1)
            enc = type(encoder)(last_hidden_state=hidden[lo:lo + chunk])
            logits = self.model(encoder_outputs=enc, decoder_input_ids=full).logits.float()
            if self.no_speech_id is not None:
                no_speech += torch.softmax(logits[:, 0], -1)[:, self.no_speech_id].tolist()
            else:
                no_speech += [math.nan] * gen.shape[0]
            step = logits[:, p - 1:p - 1 + gen.shape[1]]
            step[..., self.suppress] = -math.inf
            step[:, 0, self.begin_suppress] = -math.inf
            lp = step.gather(-1, gen.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(step, -1)
            is_eot = gen == eot
            up_to_first_eot = (torch.cumsum(is_eot.int(), 1) - is_eot.int()) == 0
            n_text = (up_to_first_eot & ~is_eot).sum(1)
            # A row cut off by the token budget never chose its end-of-text.
            cut = n_text >= self.config.max_new_tokens
            counted = up_to_first_eot & torch.isfinite(lp) & ~(is_eot & cut[:, None])
            mean = lp.masked_fill(~counted, 0.0).sum(1) / (n_text + 1)
            avg += [m if n else math.nan for m, n in zip(mean.tolist(), n_text.tolist())]
            counts += n_text.tolist()
        return no_speech, avg, counts

    def _languages(self, encoder: Any) -> tuple[list[str], list[float]]:
        """Whisper's language detection, as OpenAI's and CTranslate2's: the code and its
        probability per clip (transformers' `detect_language` gives no probability)."""
        distributions = self._language_distributions(encoder)
        langs = [max(d, key=d.__getitem__) for d in distributions]
        return langs, [d[lang] for lang, d in zip(langs, distributions)]

    def _language_distributions(self, encoder: Any) -> list[dict[str, float]]:
        """Per encoded input, the decoder's next-token distribution after <|startoftranscript|>,
        softmax over the language tokens only."""
        torch = self.torch
        lang_ids = sorted(self.model.generation_config.lang_to_id.values())
        sot = torch.full((encoder.last_hidden_state.shape[0], 1), self.sot_id, device=self.device, dtype=torch.long)
        logits = self.model(encoder_outputs=encoder, decoder_input_ids=sot).logits[:, -1].float()
        probs = torch.softmax(logits[:, lang_ids], -1).tolist()
        codes = [t.strip("<|>") for t in self.processor.tokenizer.convert_ids_to_tokens(lang_ids)]
        return [dict(zip(codes, row)) for row in probs]

    # ---- long clips: windows, each decoded long-form with timestamps ---------------------------
    def _transcribe_long(self, pcm: np.ndarray) -> Transcription:
        torch = self.torch
        segments: list[Segment] = []
        language, language_prob = self.config.language, math.nan
        window_languages: list[tuple[float, dict[str, float]]] = []
        piece = int(_WINDOW_S * self.sample_rate)
        for offset, window in iter_windows(pcm, self.sample_rate, self.config.chunk_s):
            with torch.inference_mode():
                if self.config.language is None and self.multilingual:  # each window its own (`language_detection_segments`)
                    starts = detection_pieces(len(window), piece, self.config.language_detection_segments)
                    pieces = self.processor.feature_extractor([window[s:s + piece] for s in starts],
                                                              sampling_rate=self.sample_rate, return_tensors="pt")
                    encoder = self.model.get_encoder()(pieces["input_features"].to(self.device, self.dtype))
                    probs = mean_distribution(self._language_distributions(encoder))
                    window_languages.append((len(window) / self.sample_rate, probs))
                    language = max(probs, key=probs.__getitem__)
                inputs = self._features([window], long_form=True)
                kw = self._generate_kwargs([language] if language and not self.config.language else None)
                kw.pop("max_new_tokens", None)
                c = self.config
                kw.update(return_timestamps=True, condition_on_prev_tokens=False, return_segments=True,
                          return_dict_in_generate=True, temperature=tuple(c.temperatures),
                          compression_ratio_threshold=c.token_compression_ratio_threshold,
                          logprob_threshold=c.log_prob_threshold, no_speech_threshold=c.no_speech_threshold)
                torch.manual_seed(0)  # fallback samples; same clip, same transcript on any worker
                out = self.model.generate(**inputs, **kw)
            length = len(window) / self.sample_rate
            for seg in _segments_of(out):
                text = self.processor.tokenizer.decode(seg["tokens"], skip_special_tokens=True).strip()
                if text:  # predicted timestamps can overshoot the window's end
                    start, end = (min(float(seg[k]), length) for k in ("start", "end"))
                    segments.append(Segment(text, offset + start, offset + end, math.nan, math.nan, len(seg["tokens"])))
        if window_languages:
            language, language_prob = clip_language(window_languages)
        tr = Transcription.from_segments(segments, language or "en")
        tr.compression_ratio = compression_ratio(tr.text)
        tr.language_prob = language_prob if self.multilingual else 1.0
        return tr


def log_mel_on_device(clips: list[np.ndarray], extractor: Any, device: Any) -> Any:
    """Whisper's log-mel features of a batch, computed on `device` from 16-bit samples.

    The same computation as the feature extractor (its own mel filter bank, STFT size, hop and
    normalisation), but the 30 s zero-padding and the int16-to-float conversion happen on the
    GPU: padding 512 clips in float32 on the CPU costs more than the GPU's whole forward pass.
    """
    import torch

    n_samples = extractor.n_samples
    lengths = [min(len(c), n_samples) for c in clips]
    # Only the real samples cross the bus (16-bit, one transfer); padding happens on the device.
    flat = torch.from_numpy(np.concatenate([np.asarray(c[:n], dtype=np.int16) for c, n in zip(clips, lengths)]))
    flat = flat.to(device).float().div_(32768.0)
    # One masked copy: row i's first lengths[i] samples, in row-major order, are `flat`.
    present = torch.arange(n_samples, device=device) < torch.tensor(lengths, device=device)[:, None]
    wave = torch.zeros((len(clips), n_samples), dtype=torch.float32, device=device)
    wave[present] = flat
    window = torch.hann_window(extractor.n_fft, device=device)
    stft = torch.stft(wave, extractor.n_fft, extractor.hop_length, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    filters = torch.as_tensor(extractor.mel_filters, device=device, dtype=torch.float32)
    log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0


def _encoder_decoder_cache() -> Any:
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    return EncoderDecoderCache(DynamicCache(), DynamicCache())


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
