"""A tiny multilingual Whisper with random weights: the layout of openai/whisper-tiny (51,865
tokens: 99 language tokens, task and timestamp tokens) on tiny.en's real BPE, saved as a
Hugging Face checkpoint and converted by CTranslate2's own converter, so both ASR backends'
language detection runs on the same weights. No multilingual model is shipped here."""

from __future__ import annotations

import json
import os

from audiocurate.models import resolve_model

EOT = 50257
LANG0 = EOT + 2
SPECIALS_AFTER_LANGS = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                        "<|notimestamps|>"]


def languages() -> list[str]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [c for c in LANGUAGES if c != "yue"]  # large-v3 added yue; tiny has 99


def _tokenizer_json(out: str) -> str:
    """tiny.en's tokenizer.json re-laid as the multilingual one: the BPE's own end-of-text
    entry (50256) becomes a plain token, the special tokens move to their multilingual ids."""
    src = json.load(open(os.path.join(resolve_model("embedded:whisper-tiny.en"), "tokenizer.json")))
    vocab = src["model"]["vocab"]
    vocab[""] = vocab.pop("<|endoftext|>")  # as in the multilingual BPE; CTranslate2 tells a multilingual model by it
    specials = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{c}|>" for c in languages()]
                + SPECIALS_AFTER_LANGS + [f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    src["added_tokens"] = [{"id": EOT + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True} for i, t in enumerate(specials)]
    src["post_processor"] = None
    path = os.path.join(out, "tokenizer.json")
    json.dump(src, open(path, "w"))
    return path


def build(hf_dir: str, ct2_dir: str) -> None:
    import ctranslate2
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizerFast)

    os.makedirs(hf_dir, exist_ok=True)
    tok = WhisperTokenizerFast(tokenizer_file=_tokenizer_json(hf_dir))
    tok.pad_token = "<|endoftext|>"
    assert len(tok) == 51865, len(tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS_AFTER_LANGS + ["<|startoftranscript|>"]}
    suppress_begin = [220, EOT]
    cfg = WhisperConfig(vocab_size=len(tok), num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=EOT, pad_token_id=EOT,
                        bos_token_id=EOT, begin_suppress_tokens=suppress_begin, suppress_tokens=[])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT,
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        is_multilingual=True, max_length=448, max_initial_timestamp_index=50,
        lang_to_id={f"<|{c}|>": LANG0 + i for i, c in enumerate(languages())},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        alignment_heads=[[1, 0], [1, 1]], begin_suppress_tokens=suppress_begin, suppress_tokens=[])
    model.save_pretrained(hf_dir)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(hf_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf_dir)  # faster-whisper reads preprocessor_config.json
    ctranslate2.converters.TransformersConverter(
        hf_dir, copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(ct2_dir, force=True)
