"""Tiny Whisper checkpoints with random weights, saved the way `save_pretrained` does, so the
backends' loading code runs for real: English-only on tiny.en's tokenizer (`build_english`),
and multilingual (`build_multilingual`): the layout of openai/whisper-tiny (51,865 tokens: 99
language tokens, task and timestamp tokens) on tiny.en's real BPE, converted by CTranslate2's
own converter too, so both ASR backends' language detection runs on the same weights. No
multilingual model is shipped here."""

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


def save_checkpoint(out_dir: str, tok: object, *, multilingual: bool, eot: int, **generation: object) -> None:
    """A 2-layer, 64-wide Whisper over `tok`'s vocabulary, seeded, with its processor."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor)

    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    common = dict(decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
                  begin_suppress_tokens=[220, eot], suppress_tokens=[])
    cfg = WhisperConfig(vocab_size=len(tok), num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                        **common)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        no_timestamps_token_id=tok.convert_tokens_to_ids("<|notimestamps|>"), is_multilingual=multilingual,
        max_length=448, max_initial_timestamp_index=50, **common, **generation)
    model.save_pretrained(out_dir)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out_dir)  # faster-whisper reads preprocessor_config.json


def build_english(out_dir: str) -> str:
    """tiny.en's tokenizer and token layout, random weights."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    tok = WhisperTokenizerFast(tokenizer_file=os.path.join(resolve_model("embedded:whisper-tiny.en"), "tokenizer.json"))
    tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=True) for i in range(1501)])
    tok.pad_token = "<|endoftext|>"
    save_checkpoint(out_dir, tok, multilingual=False, eot=tok.convert_tokens_to_ids("<|endoftext|>"))
    return out_dir


def build_multilingual(hf_dir: str, ct2_dir: str) -> None:
    import ctranslate2
    from transformers import WhisperTokenizerFast

    os.makedirs(hf_dir, exist_ok=True)
    tok = WhisperTokenizerFast(tokenizer_file=_tokenizer_json(hf_dir))
    tok.pad_token = "<|endoftext|>"
    assert len(tok) == 51865, len(tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS_AFTER_LANGS}
    save_checkpoint(hf_dir, tok, multilingual=True, eot=EOT, prev_sot_token_id=ids["<|startofprev|>"],
                    lang_to_id={f"<|{c}|>": LANG0 + i for i, c in enumerate(languages())},
                    task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
                    alignment_heads=[[1, 0], [1, 1]])
    ctranslate2.converters.TransformersConverter(
        hf_dir, copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(ct2_dir, force=True)
