"""cuDNN's attention kernel against the others for the transformers Whisper backend on one GPU.

    python benchmarks/gpu_attention.py --tokenizer PATH/tokenizer.json [--out DIR]

The backend's transcriber called directly (no Arrow, no stage) on 5 s clips of noise, tiny's
shape with random weights (gpu_asr.py's checkpoint), fp16, beam 1, exactly 24 tokens per clip.
Each batch size is timed on one call after a 64-clip warm-up: first with PyTorch's own choice
of attention kernel (cuDNN's, on an H200 with torch 2.11), then with cuDNN's ruled out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from gpu_asr import build_checkpoint, clips  # noqa: E402


def main() -> None:
    import torch

    from audiocurate.asr.transformers import TransformersAsrConfig, TransformersWhisperTranscriber

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    model_dir = build_checkpoint("tiny", args.tokenizer, Path(tempfile.mkdtemp()), "cuda")
    rows = []
    for cudnn, batches in ((True, (256, 1024)), (False, (256, 1024, 4096))):
        tr = TransformersWhisperTranscriber(TransformersAsrConfig(
            model=model_dir, device="cuda", compute_type="float16", beam_size=1, max_new_tokens=24,
            min_new_tokens=24, cudnn_attention=cudnn))
        for n in batches:
            data = clips(n)
            tr.transcribe_batch(data[:64])
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            tr.transcribe_batch(data)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            rows.append({"cudnn_attention": cudnn, "batch": n, "seconds": dt, "clips_per_s": n / dt})
            print(rows[-1], flush=True)
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gpu_attention.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
