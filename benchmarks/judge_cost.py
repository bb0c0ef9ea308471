"""What a judged row costs on CPU, and what each way of making it cheaper does to the scores.

    python benchmarks/judge_cost.py [--per-class 120] [--parallel 8]

The embedded judge (SmolLM2-135M, Q4_1 GGUF, one thread, as the default actor runs it) scores the
texts of the judge dev set (`corpora.judge_dev_texts`: Wikipedia sentences vs reviews, chit-chat
and jokes) in five ways:
* `stored`: the file's quantized weights, one row after another over the cached prompt prefix
  (the judge before `judge.weights`);
* `f16`: the same weights converted to F16 (`judge.weights: f16`, the default now);
* `stored+flash_attn`: llama.cpp's flash attention on;
* `stored+parallel`, `f16+parallel`: `--parallel` rows per llama.cpp decode (`judge.parallel`;
  `f16+parallel` is the default judge now), as parallel sequences that share the prefix's KV
  cells (n_seq_max, unified KV cache). The other ways run with `judge.parallel: 1`.
For each: rows/s, speed-up over `stored`, the largest and mean change of edu_score_mean per row
against `stored` and against `f16` (one row after another, the default before `judge.parallel`),
and ROC AUC of edu_score_mean against the dev set's labels (clean text; the transcript-based
AUC, precision and recall come from `benchmarks/calibrate_judge.py`).
Writes benchmarks/results/judge_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402

from audiocurate.config import LlamaCppJudgeConfig  # noqa: E402
from audiocurate.judge import load_judge_profile  # noqa: E402
from audiocurate.judge.llama_cpp import LlamaCppJudge  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "judge_cost.json"


def flash_judge(config: LlamaCppJudgeConfig, profile) -> LlamaCppJudge:
    import llama_cpp

    plain = llama_cpp.Llama

    class FlashLlama(plain):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, flash_attn=True, **kwargs)

    llama_cpp.Llama = FlashLlama
    try:
        return LlamaCppJudge(config, profile)
    finally:
        llama_cpp.Llama = plain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=120)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    items = corpora.judge_dev_texts(args.per_class)
    texts, labels = [d["text"] for d in items], np.array([d["label"] for d in items])
    profile = load_judge_profile("smollm2-135m-edu").model_copy(update={"calibration": None})
    stored, f16 = LlamaCppJudgeConfig(weights="stored", parallel=1), LlamaCppJudgeConfig(weights="f16", parallel=1)
    ways = {
        "stored": lambda: LlamaCppJudge(stored, profile),
        "f16": lambda: LlamaCppJudge(f16, profile),
        "stored+flash_attn": lambda: flash_judge(stored, profile),
        "stored+parallel": lambda: LlamaCppJudge(stored.model_copy(update={"parallel": args.parallel}), profile),
        "f16+parallel": lambda: LlamaCppJudge(f16.model_copy(update={"parallel": args.parallel}), profile),
    }
    results, means_of = {}, {}
    for name, make in ways.items():
        judge = make()
        # In the batches the pipeline's judge actor gets (a block of `asr.resources.batch_size` rows).
        t0 = time.perf_counter()
        means = np.array([s.mean for i in range(0, len(texts), 8) for s in judge.score_batch(texts[i:i + 8])])
        rate = len(texts) / (time.perf_counter() - t0)
        means_of[name] = means
        results[name] = {"rows_per_s": rate, "speedup": rate / results.get("stored", {"rows_per_s": rate})["rows_per_s"],
                         "roc_auc_clean_text": float(roc_auc_score(labels, means)),
                         "set_mean_score": float(means.mean())}
        for ref in ("stored", "f16"):
            if ref in means_of:
                diff = np.abs(means - means_of[ref])
                suffix = "" if ref == "stored" else "_vs_f16"
                results[name] |= {f"max_abs_change{suffix}": float(diff.max()),
                                  f"mean_abs_change{suffix}": float(diff.mean()),
                                  # the set's mean shift: a change per row can cancel over the set
                                  f"set_mean_change{suffix}": float(means.mean() - means_of[ref].mean())}
        print(name, json.dumps({k: round(v, 4) for k, v in results[name].items()}), flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    RESULTS.write_text(json.dumps({"machine": f"{cpu}, {os.cpu_count()} cores",
                                   "rows": len(texts), "parallel": args.parallel, "threads": 1,
                                   "ways": results}, indent=1))


if __name__ == "__main__":
    main()
