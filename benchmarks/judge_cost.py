"""What a judged row costs on CPU, and what each way of making it cheaper does to the scores.

    python benchmarks/judge_cost.py [--per-class 120] [--parallel 8]

The embedded judge (SmolLM2-135M, Q4_1 GGUF, one thread, as the default actor runs it) scores the
texts of the judge dev set (`corpora.judge_dev_texts`: Wikipedia sentences vs reviews, chit-chat
and jokes) in five ways:
* `stored`: the file's quantized weights, one row after another over the cached prompt prefix
  (the judge before `judge.weights`);
* `f16`: the same weights converted to F16 (`judge.weights: f16`, the default now);
* `stored+flash_attn`: llama.cpp's flash attention on;
* `stored+parallel`, `f16+parallel`: `--parallel` rows per llama.cpp decode, as parallel
  sequences that share the prefix's KV cells (n_seq_max, unified KV cache).
For each: rows/s, speed-up over `stored`, the largest and mean change of edu_score_mean per row
against `stored`, and ROC AUC of edu_score_mean against the dev set's labels (clean text; the
transcript-based AUC, precision and recall come from `benchmarks/calibrate_judge.py`).
Writes benchmarks/results/judge_cost.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402

from audiocurate.config import LlamaCppJudgeConfig  # noqa: E402
from audiocurate.judge import load_judge_profile, score_from_logits  # noqa: E402
from audiocurate.judge.llama_cpp import LlamaCppJudge, model_params  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "judge_cost.json"


class ParallelJudge:
    """Rows in groups, each row its own sequence over the prefix's KV cells, one decode a group."""

    def __init__(self, judge: LlamaCppJudge, parallel: int):
        import llama_cpp
        from llama_cpp import llama_cpp as C

        self.C, self.judge, self.parallel = C, judge, parallel
        default = C.llama_context_default_params

        def context_params():
            params = default()
            params.n_seq_max, params.kv_unified = parallel + 1, True
            return params

        C.llama_context_default_params = context_params
        try:
            with model_params(llama_cpp, use_extra_bufts=False):
                self.llm = llama_cpp.Llama(model_path=judge.llm.model_path, n_ctx=4096, n_threads=1,
                                           n_threads_batch=1, n_batch=2048, n_ubatch=2048, verbose=False)
        finally:
            C.llama_context_default_params = default
        self.llm.reset()
        self.llm.eval(judge.prefix_tokens)
        self.n_prefix = self.llm.n_tokens
        self.memory = C.llama_get_memory(self.llm.ctx)
        self.batch = C.llama_batch_init(2048, 0, parallel + 1)
        self.n_vocab = self.llm.n_vocab()

    def score_batch(self, texts: list[str]) -> list:
        out = []
        for i in range(0, len(texts), self.parallel):
            out += self._group(texts[i:i + self.parallel])
        return out

    def _group(self, texts: list[str]) -> list:
        C, b, prof = self.C, self.batch, self.judge.profile
        tokens = [self.llm.tokenize(prof.suffix(t).encode(), add_bos=False, special=False) for t in texts]
        n, last = 0, []
        for seq, toks in enumerate(tokens, start=1):
            C.llama_memory_seq_rm(self.memory, seq, -1, -1)
            C.llama_memory_seq_cp(self.memory, 0, seq, 0, self.n_prefix)
            for pos, tok in enumerate(toks):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, self.n_prefix + pos, 1
                b.seq_id[n][0], b.logits[n] = seq, pos == len(toks) - 1
                n += 1
            last.append(n - 1)
        b.n_tokens = n
        if C.llama_decode(self.llm.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        scores = []
        for i in last:
            ptr = C.llama_get_logits_ith(self.llm.ctx, i)
            logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
            scores.append(score_from_logits(logits[self.judge.label_ids], prof, False))
        for seq in range(1, len(texts) + 1):
            C.llama_memory_seq_rm(self.memory, seq, -1, -1)
        return scores


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
    stored, f16 = LlamaCppJudgeConfig(weights="stored"), LlamaCppJudgeConfig(weights="f16")
    ways = {
        "stored": lambda: LlamaCppJudge(stored, profile),
        "f16": lambda: LlamaCppJudge(f16, profile),
        "stored+flash_attn": lambda: flash_judge(stored, profile),
        "stored+parallel": lambda: ParallelJudge(LlamaCppJudge(stored, profile), args.parallel),
        "f16+parallel": lambda: ParallelJudge(LlamaCppJudge(f16, profile), args.parallel),
    }
    results, base = {}, None
    for name, make in ways.items():
        judge = make()
        t0 = time.perf_counter()
        means = np.array([s.mean for s in judge.score_batch(texts)])
        rate = len(texts) / (time.perf_counter() - t0)
        base = means if base is None else base
        diff = np.abs(means - base)
        results[name] = {"rows_per_s": rate, "speedup": rate / results.get("stored", {"rows_per_s": rate})["rows_per_s"],
                         "max_abs_change": float(diff.max()), "mean_abs_change": float(diff.mean()),
                         # the set's mean score and its shift: a change per row can cancel over the set
                         "set_mean_score": float(means.mean()), "set_mean_change": float(means.mean() - base.mean()),
                         "roc_auc_clean_text": float(roc_auc_score(labels, means))}
        print(name, json.dumps({k: round(v, 4) for k, v in results[name].items()}), flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    RESULTS.write_text(json.dumps({"machine": f"{cpu}, {os.cpu_count()} cores",
                                   "rows": len(texts), "parallel": args.parallel, "threads": 1,
                                   "ways": results}, indent=1))


if __name__ == "__main__":
    main()
