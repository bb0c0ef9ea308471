"""The embedded CTranslate2 Whisper (tiny.en) turned back into a Hugging Face checkpoint, so
the transformers backend can be checked against faster-whisper on the same weights.

The reverse of CTranslate2's own `WhisperLoader`: it reads `model.bin` (binary version 6:
named tensors, then aliases) and undoes the fused attention projections."""

from __future__ import annotations

import json
import os
import struct

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2_model(path: str) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin`, aliases resolved."""
    with open(path, "rb") as f:
        def num(fmt: str) -> int:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def text() -> str:
            return f.read(num("H"))[:-1].decode()

        version = num("I")
        if version != 6:
            raise ValueError(f"CTranslate2 binary version {version}, this reader knows 6")
        text(), num("I")  # spec name, revision
        out: dict[str, np.ndarray] = {}
        for _ in range(num("I")):
            name = text()
            shape = [num("I") for _ in range(num("B"))]
            dtype = num("B")
            raw = f.read(num("I"))
            if dtype not in _DTYPES:
                raise ValueError(f"{name}: dtype id {dtype} (bfloat16?) not supported here")
            out[name] = np.frombuffer(raw, _DTYPES[dtype]).reshape(shape)
        for _ in range(num("I")):
            alias, target = text(), text()
            out[alias] = out[target]
    return out


def convert_to_hf(ct2_dir: str, out_dir: str) -> str:
    """Write `out_dir` as a `WhisperForConditionalGeneration` checkpoint with processor."""
    import torch
    from tokenizers import AddedToken
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizerFast)

    v = read_ct2_model(os.path.join(ct2_dir, "model.bin"))
    meta = json.load(open(os.path.join(ct2_dir, "config.json")))
    if any(k.endswith("weight_scale") for k in v):
        raise ValueError("quantized CTranslate2 model: convert a float16/float32 one")
    vocab, d_model = v["decoder/embeddings/weight"].shape
    enc_layers = sum(1 for k in v if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
    dec_layers = sum(1 for k in v if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/weight"))
    ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    heads = int(v["encoder/num_heads"])
    tok = WhisperTokenizerFast(tokenizer_file=os.path.join(ct2_dir, "tokenizer.json"))
    tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=True) for i in range(vocab - len(tok))])
    tok.pad_token = "<|endoftext|>"
    eot, sot, prev_sot, notimestamps = tok.convert_tokens_to_ids(
        ["<|endoftext|>", "<|startoftranscript|>", "<|startofprev|>", "<|notimestamps|>"])
    cfg = WhisperConfig(
        vocab_size=vocab, num_mel_bins=v["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=enc_layers, decoder_layers=dec_layers, encoder_attention_heads=heads,
        decoder_attention_heads=int(v["decoder/num_heads"]), encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        begin_suppress_tokens=meta["suppress_ids_begin"], suppress_tokens=meta["suppress_ids"])

    sd: dict[str, np.ndarray] = {}

    def linear(hf: str, ct2: str) -> None:
        sd[f"{hf}.weight"] = v[f"{ct2}/weight"]
        if f"{ct2}/bias" in v:
            sd[f"{hf}.bias"] = v[f"{ct2}/bias"]

    def norm(hf: str, ct2: str) -> None:
        sd[f"{hf}.weight"], sd[f"{hf}.bias"] = v[f"{ct2}/gamma"], v[f"{ct2}/beta"]

    def split(hf: str, ct2: str, names: tuple[str, ...]) -> None:
        weights = np.split(v[f"{ct2}/weight"], len(names))
        biases = np.split(v[f"{ct2}/bias"], len(names))
        for name, w, b in zip(names, weights, biases):
            sd[f"{hf}.{name}.weight"] = w
            if name == "k_proj":  # Whisper's key projection has no bias; CTranslate2 fused in zeros
                assert not b.any(), "non-zero key bias"
            else:
                sd[f"{hf}.{name}.bias"] = b

    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        sd[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        for i in range(n):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            split(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
            if side == "decoder":
                linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                split(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]

    model = WhisperForConditionalGeneration(cfg)
    state = {k: torch.from_numpy(a.astype(np.float32)) for k, a in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embeddings
    if missing or unexpected:
        raise ValueError(f"weights not mapped: missing {missing}, unexpected {unexpected}")
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        no_timestamps_token_id=notimestamps, prev_sot_token_id=prev_sot, is_multilingual=False, max_length=448,
        max_initial_timestamp_index=50, alignment_heads=meta.get("alignment_heads"),
        begin_suppress_tokens=meta["suppress_ids_begin"], suppress_tokens=meta["suppress_ids"])
    model.save_pretrained(out_dir)

    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=cfg.num_mel_bins),
                     tokenizer=tok).save_pretrained(out_dir)
    return out_dir
