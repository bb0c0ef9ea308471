"""Long recordings: WER of short vs long clips of the same speech, and peak memory of a one-hour clip.

    python benchmarks/long_clip.py [--minutes 60] [--skip-hour] [--hour-threads 2]
    python benchmarks/long_clip.py --cells 10 24 [--src DIR] [--label after] [--cap-mb 9000]

Speech: tests/data/long_text.txt (the Declaration of Independence and the Gettysburg Address,
public domain) read by espeak-ng (en-us, 110 wpm: 10.3 minutes).
1. Short vs long: every sentence as its own clip, versus 1-2 minute clips (consecutive
   sentences joined) and the whole 10-minute recording; corpus WER of each (Whisper's English
   normalizer, and basic lowercase/no punctuation).
2. One hour: the recording repeated to `--minutes`, 48 kHz FLAC (Common Voice's rate), run
   through `audiocurate run` in a subprocess while the resident memory of the driver and of
   every Ray process is sampled; peak of the whole run reported.
3. `--cells H ...` (issue 25): one Parquet cell (`id`, `audio_bytes`, Common Voice style) of H
   hours of FLAC, silent (48 kHz digital silence) and spoken (the recording above at 16 kHz,
   repeated; streamed into the encoder block by block, never held whole), each through
   `audiocurate run` in a fresh process with the default configuration: peak RSS of the driver,
   of the decode workers, of the model actors and of all processes together, and the eight
   largest by process title (Ray retitles a worker after the task it runs: read, decode); how
   each row ended. `--src DIR` runs another tree's `src` (e.g. a copy of HEAD, for the 'before');
   `--cap-mb` kills a run whose processes together pass that many MB (the 'before' of a spoken
   day would take the machine), `--max-wall-s` one that runs longer (Whisper on hours).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from procmon import run_and_measure  # noqa: E402

from audiocurate.filters import corpus_wer, word_error_rate  # noqa: E402

TEXT = (HERE.parent / "tests/data/long_text.txt").read_text()
SENTENCES = [s.strip() for s in TEXT.splitlines() if s.strip()]
CACHE = HERE / ".cache"


def espeak(text: str, rate: int = 16000) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = os.path.join(tmp, "a.wav"), os.path.join(tmp, "b.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "110", "-w", raw, text], check=True)
        subprocess.run(["sox", "-V1", raw, "-r", str(rate), "-b", "16", out, "rate", "-v"], check=True)
        audio, _ = sf.read(out, dtype="int16")
    return audio


def flac(audio: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="FLAC")
    return buf.getvalue()


def short_vs_long() -> dict:
    import ray

    from audiocurate.config import PipelineConfig
    from audiocurate.pipeline import run

    groups, cur = [], []
    for s in SENTENCES:  # 1-2 minute clips: consecutive sentences up to ~220 words
        cur.append(s)
        if sum(len(x.split()) for x in cur) >= 160:
            groups.append(" ".join(cur))
            cur = []
    if cur:
        groups.append(" ".join(cur))
    rows = [{"id": f"s{i:03d}", "kind": "short", "sentence": s, "audio_bytes": flac(espeak(s), 16000)} for i, s in enumerate(SENTENCES)]
    rows += [{"id": f"m{i:03d}", "kind": "1-2 min", "sentence": g, "audio_bytes": flac(espeak(g), 16000)} for i, g in enumerate(groups)]
    rows.append({"id": "whole", "kind": "10 min", "sentence": " ".join(SENTENCES), "audio_bytes": flac(espeak(" ".join(SENTENCES)), 16000)})
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.Table.from_pylist(rows), f"{tmp}/in.parquet")
        run(PipelineConfig.load(overrides=["ray.progress=false"]), f"{tmp}/in.parquet", f"{tmp}/out", echo=lambda s: None)
        ray.shutdown()
        out = []
        for s in ("curated", "rejected"):
            if Path(f"{tmp}/out/{s}").exists():
                out += pq.read_table(f"{tmp}/out/{s}", columns=["id", "transcript", "duration_s"]).to_pylist()
    by_id = {r["id"]: r for r in out}
    res = {}
    for kind in ("short", "1-2 min", "10 min"):
        sel = [r for r in rows if r["kind"] == kind]
        refs, hyps = [r["sentence"] for r in sel], [by_id[r["id"]]["transcript"] or "" for r in sel]
        durs = [by_id[r["id"]]["duration_s"] for r in sel]
        res[kind] = {"clips": len(sel), "mean_duration_s": float(np.mean(durs)),
                     "wer_whisper_normalizer": corpus_wer(refs, hyps, "whisper_english"),
                     "wer_basic": corpus_wer(refs, hyps, "basic")}
    return res


def one_hour(minutes: float, threads: int) -> dict:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"hour_{int(minutes)}.parquet"
    base = espeak(" ".join(SENTENCES), 48000)
    reps = int(np.ceil(minutes * 60 * 48000 / len(base)))
    if not path.exists():
        audio = np.concatenate([base] * reps)
        pq.write_table(pa.table({"id": ["hour"], "audio_bytes": [flac(audio, 48000)],
                                 "sentence": [" ".join([" ".join(SENTENCES)] * reps)]}), path)
    size_mb = path.stat().st_size / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        # One clip keeps one Whisper actor busy; its thread count is a config value (`asr.threads`).
        cmd = [sys.executable, "-m", "audiocurate.cli", "run", str(path), f"{tmp}/out", "--no-progress",
               "--set", f"asr.threads={threads}"]
        code, peaks, wall = run_and_measure(cmd, env={**os.environ, "RAY_ADDRESS": ""})
        report = json.loads(Path(f"{tmp}/out/report.json").read_text())
        rows = []
        for s in ("curated", "rejected", "errors"):
            if Path(f"{tmp}/out/{s}").exists():
                rows += pq.read_table(f"{tmp}/out/{s}").to_pylist()
    r = rows[0]
    ref = " ".join([" ".join(SENTENCES)] * reps)
    return {"exit_code": code, "asr_threads": threads, "wall_s": wall, "audio_minutes": r.get("duration_s", 0) / 60, "input_parquet_mb": size_mb,
            "peak_rss_whole_run_mb": peaks.tree_peak_mb, "peak_rss_driver_mb": peaks.driver_peak_mb,
            "peak_rss_by_process_mb": dict(sorted(peaks.by_name_peak_mb.items(), key=lambda kv: -kv[1])[:8]),
            "wer_whisper_normalizer": word_error_rate(ref, r.get("transcript") or "", "whisper_english"),
            "split": "curated" if "audio" in r else ("errors" if r.get("error") else "rejected"),
            "accounting": report["accounting"]}


def _write_flac_blocks(path: Path, rate: int, seconds: float, block_of: "callable") -> None:
    """A FLAC file of `seconds`, its samples written block by block (`block_of(n)` gives the
    next n int16 samples), so a day of audio never sits in this process's memory."""
    total = int(seconds * rate)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        done = 0
        while done < total:
            n = min(rate * 600, total - done)
            f.write(block_of(n))
            done += n


def long_cell(kind: str, hours: float) -> Path:
    """A Parquet file of one row whose `audio_bytes` cell is `hours` of `kind` FLAC (cached)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"cell_{kind}_{hours:g}h.parquet"
    if path.exists():
        return path
    flac_path = CACHE / f"cell_{kind}_{hours:g}h.flac"
    if kind == "silent":
        _write_flac_blocks(flac_path, 48000, hours * 3600, lambda n: np.zeros(n, dtype=np.int16))
    else:
        base = espeak(" ".join(SENTENCES), 16000)
        pos = 0

        def speech(n: int) -> np.ndarray:
            nonlocal pos
            idx = (pos + np.arange(n)) % len(base)
            pos += n
            return base[idx]

        _write_flac_blocks(flac_path, 16000, hours * 3600, speech)
    data = flac_path.read_bytes()
    pq.write_table(pa.table({"id": [f"{kind}_{hours:g}h"], "audio_bytes": pa.array([data], pa.large_binary())}),
                   path, compression="none")
    del data
    flac_path.unlink()
    return path


def _role(name: str) -> str:
    """A sampled process's role from its name (Ray names a worker after what it runs)."""
    if name == "driver":
        return "driver"
    if "Transcribe" in name or "Judge" in name or "MapWorker" in name:
        return "actors"
    if name.startswith("ray::"):
        return "task workers (decode, read, write)"
    return "ray daemons"


def measure_cell(kind: str, hours: float, src: str | None, cap_mb: float, max_wall_s: float) -> dict:
    path = long_cell(kind, hours)
    env = {**os.environ, "RAY_ADDRESS": ""}
    if src:
        env["PYTHONPATH"] = src
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "audiocurate.cli", "run", str(path), f"{tmp}/out", "--no-progress"]
        code, peaks, wall = run_and_measure(cmd, env=env, kill_after=max_wall_s, kill_above_mb=cap_mb)
        rows = []
        for split in ("curated", "rejected", "errors"):
            if Path(f"{tmp}/out/{split}").exists():
                for r in pq.read_table(f"{tmp}/out/{split}", columns=None).to_pylist():
                    rows.append({"split": split, "drop_reason": r.get("drop_reason"), "error": r.get("error"),
                                 "duration_s": r.get("duration_s")})
    by_role: dict[str, float] = {}
    for name, mb in peaks.by_name_peak_mb.items():
        by_role[_role(name)] = max(by_role.get(_role(name), 0.0), mb)
    return {"cell": f"{kind} {hours:g} h", "input_mb": round(path.stat().st_size / 2**20, 1), "exit_code": code,
            "killed": peaks.killed, "wall_s": round(wall, 1), "peak_rss_all_mb": round(peaks.tree_peak_mb),
            "peak_rss_driver_mb": round(peaks.driver_peak_mb),
            "peak_rss_one_process_by_role_mb": {k: round(v) for k, v in sorted(by_role.items())},
            # Ray retitles a worker after the task it runs: which task a peak belongs to.
            "peak_rss_by_process_mb": {k: round(v) for k, v in sorted(peaks.by_name_peak_mb.items(),
                                                                       key=lambda kv: -kv[1])[:8]},
            "rows": rows}


def print_cells(label: str, results: list[dict]) -> None:
    print(f"\n{label}")
    print(f"{'cell':<14}{'input MB':>9}{'driver':>8}{'task wkr':>9}{'actors':>8}{'all':>8}{'wall s':>8}  outcome")
    for r in results:
        roles = r["peak_rss_one_process_by_role_mb"]
        outcome = "; ".join(f"{x['split']} {x['drop_reason'] or x['error'] or ''}".strip() for x in r["rows"])
        if r["killed"]:
            outcome = f"killed ({r['killed']}) " + outcome
        print(f"{r['cell']:<14}{r['input_mb']:>9}{r['peak_rss_driver_mb']:>8}"
              f"{roles.get('task workers (decode, read, write)', 0):>9}{roles.get('actors', 0):>8}"
              f"{r['peak_rss_all_mb']:>8}{r['wall_s']:>8}  {outcome[:90]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--skip-hour", action="store_true")
    ap.add_argument("--hour-threads", type=int, default=2, help="asr.threads for the one-hour run (2 cores, one clip)")
    ap.add_argument("--skip-wer", action="store_true")
    ap.add_argument("--cells", type=float, nargs="*", help="hours of each long cell (issue 25); alone")
    ap.add_argument("--kinds", nargs="*", default=["silent", "spoken"])
    ap.add_argument("--src", help="PYTHONPATH of the run (another tree's src, e.g. HEAD's for 'before')")
    ap.add_argument("--label", default="after")
    ap.add_argument("--cap-mb", type=float, default=9000, help="kill a run whose processes pass this RSS")
    ap.add_argument("--max-wall-s", type=float, default=300)
    args = ap.parse_args()
    if args.cells:
        cells = [measure_cell(k, h, args.src, args.cap_mb, args.max_wall_s) for h in args.cells for k in args.kinds]
        print_cells(args.label, cells)
        (HERE / "results").mkdir(exist_ok=True)
        out = HERE / "results/long_cells.json"
        saved = json.loads(out.read_text()) if out.exists() else {}
        saved[args.label] = cells
        out.write_text(json.dumps(saved, indent=2))
        return
    result = {}
    if not args.skip_wer:
        result["wer_short_vs_long"] = short_vs_long()
        print(json.dumps(result, indent=2), flush=True)
    if not args.skip_hour:
        result["one_hour"] = one_hour(args.minutes, args.hour_threads)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/long_clip.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
