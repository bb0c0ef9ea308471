"""What the report costs per output row: `build_report` over a real run's output.

    python benchmarks/report_cost.py [--rows 20000] [--repeat 5]

The output is that of `audiocurate run` on `benchmarks/plumbing.py`'s data (near-silent 0.5 s
clips, every one rejected at decode), made once in benchmarks/.cache/. The report reads every
shard of every split after each attempt, so at 100 M rows each microsecond a row is 100 s.
Timed in this process, after one untimed build (imports, the page cache): the best of
`--repeat` builds, and the median. Writes benchmarks/results/report_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import plumbing  # noqa: E402

RESULTS = HERE / "results" / "report_cost.json"


def output_of_a_run(rows: int) -> Path:
    out = plumbing.CACHE / f"report-out-{rows}"
    if not (out / "report.json").exists():
        data = plumbing.dataset(rows)
        exe = Path(sys.executable).parent / "audiocurate"
        subprocess.run([str(exe), "run", str(data), str(out), "--restart", "--no-progress"], check=True,
                       capture_output=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import yaml

    from audiocurate.config import PipelineConfig
    from audiocurate.report import build_report
    from audiocurate.sinks import OutputDir

    out = OutputDir(str(output_of_a_run(args.rows)))
    config = PipelineConfig.model_validate(yaml.safe_load(out.read_bytes(out.path("_state", "config.yaml"))))

    def build() -> dict:
        return build_report(out, config, input_rows=args.rows, id_column=config.source.id_column, input_uri="")

    report = build()
    walls = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        build()
        walls.append(time.perf_counter() - t0)
    n = sum(report["accounting"][k] for k in ("curated", "rejected", "errors"))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "output_rows": n,
        "accounting": {k: report["accounting"][k] for k in ("curated", "rejected", "errors")},
        "best_us_per_row": 1e6 * min(walls) / n,
        "median_us_per_row": 1e6 * float(np.median(walls)) / n,
        "walls_s": [round(w, 4) for w in walls],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
