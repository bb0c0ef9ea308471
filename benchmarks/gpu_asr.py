"""The transformers ASR stage on one GPU versus the reference tutorial's configuration.

    python benchmarks/gpu_asr.py --tokenizer PATH/tokenizer.json [--seconds 12] [--out DIR]

Whisper tiny and large-v3-turbo shapes with random weights (no network on the GPU machine),
saved with `save_pretrained` and loaded by our backend's real loading code. 5-second clips,
exactly 24 tokens decoded per clip (min = max new tokens), fp16.

* reference: the tutorial's shape: batch 2, one preprocessing worker (the feature extractor's
  numpy STFT on the CPU), then `generate` on the GPU;
* ours: `audiocurate.stages.TranscribeStage` called on Arrow batches of 16-bit clips, exactly as
  Ray Data calls it: features on the GPU, one encoder pass, batched decoding, Whisper's
  confidence signals, text, output columns. Beam 1 decodes in the backend's own greedy loop;
  `--compare-generate` also runs each batch through `generate` and the teacher-forced
  confidence pass (the path before it) and checks both give the same rows.
Throughput in clips per second, each measured for about `--seconds` after a warm-up call;
`--phases` adds one call per batch timed by part (features, encoder, decoding, text).
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


def ours(model_dir: str, device: str, budget_s: float, batch: int, greedy_loop: bool = True,
         phases: bool = False) -> dict:
    """`greedy_loop` False: beam 1 through `generate` and the teacher-forced confidence pass
    (what the stage did before its own greedy loop). `phases`: one more call, timed by part."""
    import pyarrow as pa
    import torch

    from audiocurate import contract as C
    from audiocurate.config import PipelineConfig
    from audiocurate.stages import TranscribeStage

    config = PipelineConfig.load(overrides=[
        "asr.backend=transformers", f"asr.model={model_dir}", f"asr.device={device}", "asr.compute_type=float16",
        "asr.beam_size=1", f"asr.max_new_tokens={TOKENS}", f"asr.min_new_tokens={TOKENS}", "asr.features_on_device=auto",
        f"asr.resources.batch_size={batch}"])
    stage = TranscribeStage(config.asr)
    # The stage cuts what it is given into `asr.resources.batch_size` rows (8 by default): one
    # model call per table here, or the figure is of batches of 8.
    assert stage.batch_size == batch
    stage.transcriber.greedy_loop = greedy_loop
    table = pa.table({"id": [str(i) for i in range(batch)],
                      C.PCM: pa.array([c.tobytes() for c in clips(batch)], pa.large_binary())})

    def step() -> int:
        out = stage(table)
        assert out.num_rows == batch and out["transcript"].null_count == 0
        return batch

    n, t = timed(step, budget_s)
    result = {"batch": batch, "greedy_loop": greedy_loop, "clips": n, "seconds": t, "clips_per_s": n / t}
    if phases:
        result["phases_s"] = timed_parts(stage, table)
    out = stage(table.slice(0, 8)).select(["transcript", "avg_logprob", "no_speech_prob"]).to_pylist()
    result["sample_row"] = out[0]
    result["rows_8"] = out  # the same 8 clips decoded by either path: compared in main()
    del stage
    torch.cuda.empty_cache()
    return result


def timed_parts(stage, table) -> dict:
    """One stage call with the transcriber's parts wrapped in synchronised timers: where a
    batch's time goes (the rest of `total` is the stage's own Arrow and Python work). The
    wrappers stay on `stage`: time nothing else with it afterwards."""
    import torch

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    tr = stage.transcriber
    spent: dict[str, float] = {}

    def wrap(name, fn):
        def timed_fn(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
            return out
        return timed_fn

    encoder = tr.model.get_encoder()
    tr._features = wrap("features", tr._features)
    tr.model.get_encoder = lambda: wrap("encoder", encoder)
    tr._greedy = wrap("decode (greedy loop)", tr._greedy)
    tr.model.generate = wrap("decode (generate)", tr.model.generate)
    tr._confidence = wrap("confidence pass", tr._confidence)
    tr.processor.tokenizer.batch_decode = wrap("token ids to text", tr.processor.tokenizer.batch_decode)
    tr.transcribe_batch = wrap("transcribe_batch", tr.transcribe_batch)
    sync()
    t0 = time.perf_counter()
    stage(table)
    sync()
    spent["total"] = time.perf_counter() - t0
    return {k: round(v, 4) for k, v in spent.items()}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--shapes", nargs="+", default=["tiny", "large-v3-turbo"])
    ap.add_argument("--batches", default="tiny:1024,2048,4096;large-v3-turbo:256,512,768")
    ap.add_argument("--compare-generate", action="store_true",
                    help="also run each batch through `generate` + the confidence pass (the old path)")
    ap.add_argument("--phases", action="store_true", help="time one call of each batch by part")
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
            for greedy in (True, False) if args.compare_generate else (True,):
                for b in batches[shape]:
                    try:
                        r = ours(model_dir, device, args.seconds, b, greedy, phases=args.phases)
                    except torch.cuda.OutOfMemoryError as e:
                        r = {"batch": b, "greedy_loop": greedy, "error": f"out of memory: {e}"[:200]}
                        torch.cuda.empty_cache()
                    except Exception as e:  # one path failing must not cost the other's figures
                        import traceback

                        r = {"batch": b, "greedy_loop": greedy, "error": traceback.format_exc()[-1500:]}
                        torch.cuda.empty_cache()
                    res["ours"].append(r)
                    print(shape, "ours", json.dumps({k: v for k, v in r.items() if k != "rows_8"}), flush=True)
            done = [r for r in res["ours"] if "clips_per_s" in r]
            best = max(done, key=lambda r: (r["greedy_loop"], r["clips_per_s"]))
            res["best"] = {"batch": best["batch"], "greedy_loop": best["greedy_loop"], "clips_per_s": best["clips_per_s"],
                           "speedup_vs_reference": best["clips_per_s"] / res["reference"]["clips_per_s"]}
            by_path = {r["greedy_loop"]: r for r in done if r["batch"] == best["batch"]}
            if len(by_path) == 2:  # same batch, both paths: same transcripts and signals?
                a, b = by_path[True]["rows_8"], by_path[False]["rows_8"]
                res["paths_agree"] = {
                    "transcripts": sum(x["transcript"] == y["transcript"] for x, y in zip(a, b)) / len(a),
                    "max_abs_avg_logprob_diff": max(abs(x["avg_logprob"] - y["avg_logprob"]) for x, y in zip(a, b)),
                    "max_abs_no_speech_diff": max(abs(x["no_speech_prob"] - y["no_speech_prob"]) for x, y in zip(a, b)),
                }
                res["best"]["generate_path_clips_per_s"] = by_path[False]["clips_per_s"]
            result[shape] = res
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gpu_asr.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: ({"best": v["best"], "paths_agree": v.get("paths_agree")}
                          if isinstance(v, dict) and "best" in v else v) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
