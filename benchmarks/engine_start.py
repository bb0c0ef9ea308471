"""What the portable default costs: the judge with and without llama.cpp's extra buffer types,
and the time the engine probe adds to a run's start.

    python benchmarks/engine_start.py [--rows 240] [--repeats 3]

1. Judge rows/s: the embedded llama.cpp judge (`LlamaCppJudge`, one thread, as the default
   actor runs it) scores the transcripts' texts of the judge dev set (`corpora.judge_dev_texts`)
   with `judge.extra_buffer_types` false (the default) and true, alternating, `--repeats` times
   each; the largest difference of `edu_score_mean` between the two is reported too.
2. Probe: `probe.check_engines` on a local Ray (2 CPUs) with an empty cache (cold: both engines
   load in subprocesses and score one row) and again (warm: cached), plus Ray's own start.
Writes benchmarks/results/engine_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402

from audiocurate.config import LlamaCppJudgeConfig, PipelineConfig, RayConfig  # noqa: E402
from audiocurate.judge import load_judge_profile  # noqa: E402
from audiocurate.judge.llama_cpp import LlamaCppJudge  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "engine_start.json"


def judge_rate(texts: list[str], extra: bool) -> tuple[float, list[float]]:
    config = LlamaCppJudgeConfig(extra_buffer_types=extra)
    judge = LlamaCppJudge(config, load_judge_profile(config.profile))
    t0 = time.perf_counter()
    scores = judge.score_batch(texts)
    elapsed = time.perf_counter() - t0
    return len(texts) / elapsed, [s.mean for s in scores]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import llama_cpp

    texts = [d["text"] for d in corpora.judge_dev_texts(args.rows // 2)][: args.rows]
    rates: dict[str, list[float]] = {"off": [], "on": []}
    means: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for key, extra in (("off", False), ("on", True)):
            rate, m = judge_rate(texts, extra)
            rates[key].append(rate)
            means[key] = m
            print(f"judge, extra buffer types {key}: {rate:.1f} rows/s", flush=True)
    diff = max(abs(a - b) for a, b in zip(means["off"], means["on"]))

    import ray

    from audiocurate.probe import check_engines
    from audiocurate.runtime import init_ray

    t0 = time.time()
    init_ray(RayConfig(num_cpus=2, progress=False))
    ray_start = time.time() - t0
    config = PipelineConfig.load(overrides={"ray.num_cpus": 2})
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.time()
        check_engines(config, cache_dir=cache)
        cold = time.time() - t0
        t0 = time.time()
        check_engines(config, cache_dir=cache)
        warm = time.time() - t0
    ray.shutdown()
    result = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "judge_rows": len(texts),
        "judge_rows_per_s": {k: {"median": sorted(v)[len(v) // 2], "runs": v} for k, v in rates.items()},
        "edu_score_mean_max_abs_diff_on_vs_off": diff,
        "ray_start_s": ray_start,
        "probe_cold_s": cold,
        "probe_warm_s": warm,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
