"""Kill-and-resume cycles: rows lost or duplicated when runs are SIGKILLed at random moments.

    python benchmarks/kill_resume.py [--cycles 10] [--clips 40]

1. Reference: one uninterrupted `audiocurate run --limit N` of the dev clips.
2. The same command into a fresh OUTPUT, SIGKILLed (driver and its local Ray, as one process
   group) at a uniformly random moment of an attempt, `--cycles` times; then run to completion.
3. Compared with the reference: ids missing, ids written twice, ids in a different output.
Also reported: the resume bookkeeping time of the final attempts against their wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import corpora  # noqa: E402
from procmon import run_and_measure  # noqa: E402

SPLITS = ("curated", "rejected", "errors")


def outputs(out: Path) -> dict[str, list[str]]:
    res = {}
    for s in SPLITS:
        ids: list[str] = []
        for f in sorted((out / s).glob("part-*.parquet")) if (out / s).exists() else []:
            ids += pq.read_table(f, columns=["id"])["id"].to_pylist()
        res[s] = ids
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    src = corpora.dev_clips()
    env = {**os.environ, "RAY_ADDRESS": ""}
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "-m", "audiocurate.cli", "run", str(src)]
        opts = ["--limit", str(args.clips), "--no-progress", "--set", "output.rows_per_shard=4"]
        code, _, ref_wall = run_and_measure([*base, f"{tmp}/ref", *opts], env=env)
        assert code == 0
        reference = {s: sorted(v) for s, v in outputs(Path(tmp, "ref")).items()}
        ref_report = json.loads(Path(tmp, "ref", "report.json").read_text())
        out = Path(tmp, "killed")
        kills = []
        for cycle in range(args.cycles):
            at = rng.uniform(2.0, ref_wall)
            code, _, wall = run_and_measure([*base, str(out), *opts], env=env, kill_after=at)
            done = sum(len(v) for v in outputs(out).values())
            kills.append({"cycle": cycle, "kill_after_s": round(at, 1), "exit": code, "rows_done": done})
            print(json.dumps(kills[-1]), flush=True)
        code, _, _ = run_and_measure([*base, str(out), *opts], env=env)
        final = outputs(out)
        report = json.loads((out / "report.json").read_text())
    all_ref = {i: s for s, ids in reference.items() for i in ids}
    written = Counter(i for ids in final.values() for i in ids)
    where = {i: s for s, ids in final.items() for i in ids}
    result = {
        "clips": args.clips, "cycles": args.cycles, "kills": kills,
        "killed_while_running": sum(1 for k in kills if k["exit"] != 0),
        "final_exit": code,
        "lost": sorted(set(all_ref) - set(written)),
        "duplicated": sorted(i for i, n in written.items() if n > 1),
        "different_output": sorted(i for i in all_ref if i in where and where[i] != all_ref[i]),
        "extra": sorted(set(written) - set(all_ref)),
        "attempts": report["timing"]["attempts"],
        "accounting": report["accounting"],
        "reference_wall_s": ref_wall,
        "reference_bookkeeping_s": ref_report["timing"].get("bookkeeping_s"),
        "reference_bookkeeping_fraction": (ref_report["timing"].get("bookkeeping_s") or 0) / ref_report["timing"]["wall_s"],
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/kill_resume.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "kills"}, indent=2))


if __name__ == "__main__":
    main()
