"""The transformers ASR stage on one GPU versus the reference tutorial's configuration.

    python benchmarks/gpu_asr.py --tokenizer PATH/tokenizer.json [--seconds 12] [--out DIR]

Whisper tiny and large-v3-turbo shapes with random weights (no network on the GPU machine),
saved with `save_pretrained` and loaded by our backend's real loading code. 5-second clips,
exactly 24 tokens decoded per clip (min = max new tokens), fp16.

* reference: the tutorial's shape: batch 2, one preprocessing worker (the feature extractor's
  numpy STFT on the CPU), then `generate` on the GPU;
* ours: `audiocurate.stages.TranscribeStage` called on Arrow batches of 16-bit clips, exactly as
  Ray Data calls it: features on the GPU, one encoder pass, batched decoding, Whisper's
  confidence signals, text, output columns.
Throughput in clips per second, each measured for about `--seconds` after a warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHAPES = {
    "tiny": dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6, decoder_attention_heads=6,
                 encoder_ffn_dim=1536, decoder_ffn_dim=1536, num_mel_bins=80),
    "large-v3-turbo": dict(d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20,
                           decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128),
}
TOKENS = 24


def build_checkpoint(shape: str, tokenizer_json: str, root: Path, device: str) -> str:
    import torch
    from tokenizers import AddedToken
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizerFast)

    d = root / shape
    tok = WhisperTokenizerFast(tokenizer_file=tokenizer_json)
    tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=True) for i in range(1501)])
    tok.pad_token = "<|endoftext|>"
    eot, sot, notime = 50256, 50257, 50362
    cfg = WhisperConfig(vocab_size=len(tok), decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot,
                        bos_token_id=eot, begin_suppress_tokens=[220, eot], suppress_tokens=[], **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = WhisperForConditionalGeneration(cfg).half()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot, no_timestamps_token_id=notime,
        is_multilingual=False, max_length=448, max_initial_timestamp_index=50, begin_suppress_tokens=[220, eot],
        suppress_tokens=[])
    model.save_pretrained(d)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=SHAPES[shape]["num_mel_bins"]),
                     tokenizer=tok).save_pretrained(d)
    del model
    return str(d)


def clips(n: int, seconds: float = 5.0) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(int(16000 * seconds)) * 3000).astype(np.int16) for _ in range(n)]


def timed(fn, budget_s: float) -> tuple[int, float]:
    import torch

    fn()  # warm-up
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s:
        done += fn()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return done, time.perf_counter() - t0


def reference(model_dir: str, device: str, budget_s: float, batch: int = 2) -> dict:
    """The tutorial's loop: CPU features for a batch of 2, then generate on the GPU."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    proc = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float16).to(device).eval()
    data = [c.astype(np.float32) / 32768.0 for c in clips(batch)]

    def step() -> int:
        feats = proc.feature_extractor(data, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            out = model.generate(feats.to(device, torch.float16), max_new_tokens=TOKENS, min_new_tokens=TOKENS)
        proc.batch_decode(out, skip_special_tokens=True)
        return batch

    n, t = timed(step, budget_s)
    del model
    torch.cuda.empty_cache()
    return {"batch": batch, "clips": n, "seconds": t, "clips_per_s": n / t}


def ours(model_dir: str, device: str, budget_s: float, batch: int) -> dict:
    import pyarrow as pa
    import torch

    from audiocurate import contract as C
    from audiocurate.config import PipelineConfig
    from audiocurate.stages import TranscribeStage

    config = PipelineConfig.load(overrides=[
        "asr.backend=transformers", f"asr.model={model_dir}", f"asr.device={device}", "asr.compute_type=float16",
        "asr.beam_size=1", f"asr.max_new_tokens={TOKENS}", f"asr.min_new_tokens={TOKENS}", "asr.features_on_device=auto"])
    stage = TranscribeStage(config.asr)
    table = pa.table({"id": [str(i) for i in range(batch)],
                      C.PCM: pa.array([c.tobytes() for c in clips(batch)], pa.large_binary())})

    def step() -> int:
        out = stage(table)
        assert out.num_rows == batch and out["transcript"].null_count == 0
        return batch

    n, t = timed(step, budget_s)
    sample = stage(table.slice(0, 2)).select(["transcript", "avg_logprob", "no_speech_prob"]).to_pylist()
    del stage
    torch.cuda.empty_cache()
    return {"batch": batch, "clips": n, "seconds": t, "clips_per_s": n / t, "sample_row": sample[0]}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--shapes", nargs="+", default=["tiny", "large-v3-turbo"])
    ap.add_argument("--batches", default="tiny:256,512,1024;large-v3-turbo:64,128,256")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = {k: [int(x) for x in v.split(",")] for k, v in (p.split(":") for p in args.batches.split(";"))}
    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                    "torch": torch.__version__, "tokens_per_clip": TOKENS, "clip_seconds": 5.0}
    import transformers

    result["transformers"] = transformers.__version__
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            t0 = time.time()
            model_dir = build_checkpoint(shape, args.tokenizer, Path(tmp), device)
            res = {"build_s": time.time() - t0, "reference": reference(model_dir, device, args.seconds)}
            print(shape, "reference", json.dumps(res["reference"]), flush=True)
            res["ours"] = []
            for b in batches[shape]:
                try:
                    r = ours(model_dir, device, args.seconds, b)
                except torch.cuda.OutOfMemoryError as e:
                    r = {"batch": b, "error": f"out of memory: {e}"[:200]}
                    torch.cuda.empty_cache()
                res["ours"].append(r)
                print(shape, "ours", json.dumps(r), flush=True)
            best = max((r for r in res["ours"] if "clips_per_s" in r), key=lambda r: r["clips_per_s"])
            res["best"] = {"batch": best["batch"], "clips_per_s": best["clips_per_s"],
                           "speedup_vs_reference": best["clips_per_s"] / res["reference"]["clips_per_s"]}
            result[shape] = res
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gpu_asr.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: (v["best"] if isinstance(v, dict) and "best" in v else v) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
