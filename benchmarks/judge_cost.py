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
Writes benchmarks/results/judge_cost.json, with the machine: CPU model, SMT, the SIMD/AMX flags it
advertises and llama.cpp's own build line (`machine()`).

    python benchmarks/judge_cost.py --compare smollm2-135m-edu,gemma3-270m-edu

CPU ms per row of each profile's judge as the default actor runs it, f16 and stored weights,
measured in turns on the same texts (benchmarks/results/judge_cost_compare.json).

Why one judge row costs more CPU on an AMX Xeon than on an AMD EPYC (issue 29: 42.3 vs 17.8
CPU-s in benchmarks/throughput.py, Whisper only 1.17x), from the code and the build; the Xeon
itself was not available to this measurement:
* The llama.cpp build was portable by being AVX2 only (until 2026-12-07: AVX2/FMA/F16C, no
  AVX-512, no AMX; build line `AVX2 = 1 | F16C = 1 | LLAMAFILE = 1 | OPENMP = 1`). On every CPU
  the judge ran the same 8-wide AVX2 kernels; the F16 path (judge.weights: f16) converts each
  weight from F16 with F16C on the fly. A Xeon's AVX-512/AMX units stayed idle for the judge,
  while CTranslate2 (Whisper) picks AVX-512/VNNI kernels at run time: that is why Whisper
  kept pace on the Xeon and the judge did not.
* Two vCPUs of a cloud Xeon are usually one core's two hyperthreads (`machine()["smt"]`): the
  judge actor and the Whisper actors then share one core's FMA units, so each CPU-second does
  less work than on the EPYC, whose two vCPUs here are two cores.
* On a fresh machine the first judge actor converts the GGUF to F16 (1.2 CPU-s for SmolLM2 on
  the 2-core EPYC, measured) and every actor hashes the model file to find the cached copy
  (0.14 CPU-s): ~1.5 CPU-s of the 24.5 difference at most (`f16_copy_was_cached`).
* `judge.threads: 1` (the default) spins nothing; more threads than free cores would.
So the figure to compare across CPU families is CPU ms per row with the machine line beside it.
What makes a Xeon's judge use its vector units is now the build: scripts/build_llama_cpp.sh
builds llama.cpp's CPU backend at three levels (haswell: AVX2; skylakex: AVX-512; icelake:
AVX-512 VBMI/VNNI; none with AMX) and the judge loads the best this CPU runs (`judge.cpu_level`).

    python benchmarks/judge_cost.py --levels haswell,icelake --judge-profile gemma3-270m-edu

runs --compare once per level, each in its own process, and gives the CPU ms per row and how far
edu_score_mean moves against the first level (benchmarks/results/judge_cost_levels.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

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
    ap.add_argument("--judge-profile", default="smollm2-135m-edu")
    ap.add_argument("--compare", default=None, help="comma-separated judge profiles: only their cost per row "
                    "as the default actor runs them (f16 and stored weights, parallel), in turns, same texts")
    ap.add_argument("--cpu-level", default=None, help="with --compare: judge.cpu_level (default: the best "
                    "this CPU runs)")
    ap.add_argument("--levels", default=None, help="comma-separated CPU levels of llama.cpp's backend "
                    "(haswell,skylakex,icelake): --compare of --judge-profile at each, a process per level, "
                    "and how far the scores move between them (judge_cost_levels.json)")
    ap.add_argument("--out", default=None, help="with --compare: results file (default judge_cost_compare.json)")
    args = ap.parse_args()
    if args.levels:
        return levels(args.levels.split(","), args.judge_profile, args.per_class, args.parallel)
    if args.compare:
        return compare(args.compare.split(","), args.per_class, args.parallel, cpu_level=args.cpu_level,
                       out=args.out)
    from sklearn.metrics import roc_auc_score

    items = corpora.judge_dev_texts(args.per_class)
    texts, labels = [d["text"] for d in items], np.array([d["label"] for d in items])
    profile = load_judge_profile(args.judge_profile).model_copy(update={"calibration": None})
    from audiocurate.models import derived_model_path, resolve_model

    # A fresh machine converts the model to F16 inside the first judge actor (~1.2 CPU-s for
    # SmolLM2 on the 2-core EPYC): a run's judge CPU includes it once, a warm machine's not.
    f16_cached = derived_model_path(resolve_model(profile.model), "f16", ".gguf").exists()
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
    RESULTS.write_text(json.dumps({"machine": machine(), "judge_profile": args.judge_profile,
                                   "f16_copy_was_cached": f16_cached,
                                   "rows": len(texts), "parallel": args.parallel, "threads": 1,
                                   "ways": results}, indent=1))


def levels(names: list[str], profile: str, per_class: int, parallel: int) -> None:
    """The same judge at each CPU level of llama.cpp's backend (issue 29: a judge row cost 2.4x the
    CPU on an AVX-512/AMX Xeon while the build ran AVX2 kernels everywhere): CPU ms per row, and
    the largest change of edu_score_mean per row against the first level."""
    import subprocess
    import tempfile

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for level in names:
            out = Path(tmp) / f"{level}.json"
            subprocess.run([sys.executable, __file__, "--compare", profile, "--cpu-level", level, "--out", str(out),
                            "--per-class", str(per_class), "--parallel", str(parallel)], check=True)
            runs[level] = json.loads(out.read_text())
    first = names[0]
    from audiocurate.judge.llama_cpp import cpu_level

    machine_line = {**runs[first]["machine"], "llama_cpp_cpu_level": f"{cpu_level()} (what `best` loads here)"}
    result: dict = {"machine": machine_line, "judge_profile": profile, "rows": runs[first]["rows"],
                    "parallel": parallel, "threads": 1, "levels": {}}
    for level, run in runs.items():
        row = {}
        for key, judged in run["judges"].items():
            weights = key.split("/")[1]
            change = np.abs(np.array(judged["means"]) - np.array(runs[first]["judges"][key]["means"]))
            row[weights] = {"cpu_ms_per_row": judged["cpu_ms_per_row"],
                            f"vs_{first}": round(judged["cpu_ms_per_row"] / runs[first]["judges"][key]["cpu_ms_per_row"], 3),
                            f"max_abs_change_vs_{first}": round(float(change.max()), 5),
                            f"mean_abs_change_vs_{first}": round(float(change.mean()), 6)}
        result["levels"][level] = {"llama_cpp_build": run["machine"]["llama_cpp_build"], **row}
        print(level, json.dumps(row), flush=True)
    path = RESULTS.with_name("judge_cost_levels.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


def compare(profiles: list[str], per_class: int, parallel: int, rounds: int = 2, cpu_level: Optional[str] = None,
            out: Optional[str] = None) -> None:
    """CPU seconds per row of each judge profile, measured in turns (round-robin, `rounds` times,
    best round kept) so that a neighbour's load on a shared machine falls on all of them alike."""
    import judge_eval

    # The judge dev set's English texts (benchmarks/judge_eval.py): every length bucket alike.
    texts = [it["text"] for it in judge_eval.dev_set({"en": max(per_class // 6, 1)})]
    judges = {}
    for name in profiles:
        profile = load_judge_profile(name).model_copy(update={"calibration": None})
        for weights in ("f16", "stored"):
            config = LlamaCppJudgeConfig(weights=weights, parallel=parallel, cpu_level=cpu_level or "best")
            judges[f"{name}/{weights}"] = LlamaCppJudge(config, profile)
    cpu_s: dict[str, list[float]] = {k: [] for k in judges}
    means: dict[str, list[float]] = {}
    for _ in range(rounds):
        for key, judge in judges.items():
            t0 = time.process_time()
            scores = [s for i in range(0, len(texts), 8) for s in judge.score_batch(texts[i:i + 8])]
            cpu_s[key].append((time.process_time() - t0) / len(texts))
            means[key] = [round(s.mean, 6) for s in scores]
    base = min(cpu_s[f"{profiles[0]}/f16"])
    results = {k: {"cpu_ms_per_row": round(1000 * min(v), 2), "rows_per_cpu_s": round(1 / min(v), 2),
                   "vs_first_f16": round(min(v) / base, 3)} for k, v in cpu_s.items()}
    for k, v in results.items():
        print(k, v, flush=True)
    path = Path(out) if out else RESULTS.with_name("judge_cost_compare.json")
    path.write_text(json.dumps({"machine": machine(), "rows": len(texts), "parallel": parallel, "threads": 1,
                                "rounds": rounds, "judges": {k: {**v, "means": means[k]} for k, v in results.items()}},
                               indent=1))
    print(f"wrote {path}")


def machine() -> dict:
    """The CPU model, cores, the SIMD/AMX flags it advertises and what llama.cpp's build uses:
    a judge's cost per row means little without them. `llama_cpp_cpu_level`: the level of
    llama.cpp's CPU backend this CPU got (scripts/build_llama_cpp.sh)."""
    from audiocurate.judge.llama_cpp import cpu_level, load_llama_cpp

    llama_cpp = load_llama_cpp()

    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"]
    siblings = next((int(line.split(":")[1]) for line in info if line.startswith("siblings")), None)
    cores = next((int(line.split(":")[1]) for line in info if line.startswith("cpu cores")), None)
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "cores_per_socket": cores, "siblings_per_socket": siblings,
            "smt": bool(siblings and cores and siblings > cores),
            "cpu_flags": {f: f in flags for f in wanted},
            "llama_cpp_cpu_level": cpu_level(),
            "llama_cpp_build": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}


if __name__ == "__main__":
    main()
