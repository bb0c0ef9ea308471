"""`report.json` and `report.html` of an output: one pass over its stored rows, a row group at
a time, into the run's tally and the threshold what-ifs, then one dict."""

from __future__ import annotations

import math
from typing import Any, Optional

import pyarrow.parquet as pq

from ..config import PipelineConfig
from ..report_audio import players_for
from ..run_state import CURATED, ERRORS, REJECTED, SPLITS
from ..sinks import OutputDir
from .html import render_html
from .tally import DURATION_EDGES, GROUP_COLUMNS, MEAN_EDGES, TALLY_COLUMNS, WER_EDGES, RunTally
from .whatif import MARGIN_CLIPS, WhatIfTally, gates_of


def build_report(
    out: OutputDir,
    config: PipelineConfig,
    *,
    input_rows: int,
    keep_ids: Optional[list[str]] = None,
    id_column: str = "id",
    input_uri: str = "",
) -> dict[str, Any]:
    tally = RunTally(keep_ids, config.output.report_samples)
    whatif = WhatIfTally(gates_of(config), min(MARGIN_CLIPS, config.output.report_clips))
    wanted = [id_column, *TALLY_COLUMNS, *GROUP_COLUMNS, *whatif.columns]
    for split in SPLITS:
        for path in out.part_files(split):
            with out.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                columns = [c for c in dict.fromkeys(wanted) if c in pf.schema_arrow.names]
                for i in range(pf.num_row_groups):  # a compacted file is read a row group at a time
                    t = pf.read_row_group(i, columns=columns)
                    tally.add(split, t, path)
                    whatif.add(split, t, path)
    accounted = sum(tally.rows[s] for s in SPLITS)
    dups, in_scope = tally.duplicates_and_parents()
    attempts = out.state.attempts()
    finished = [a for a in attempts if a.get("status") == "finished"]
    wall_s = float(sum(a.get("wall_s", 0.0) for a in finished))
    audio_total = float(sum(tally.audio_s.values()))
    report: dict[str, Any] = {
        "output": out.uri,
        "input": input_uri,
        "engines": (out.state.identity() or {}).get("engines", {}),
        "accounting": {
            "input": input_rows,
            CURATED: tally.rows[CURATED],
            REJECTED: tally.rows[REJECTED],
            ERRORS: tally.rows[ERRORS],
            "accounted": accounted,
            "in_scope": in_scope,
            "recordings": in_scope if config.segment.enabled else None,
            "duplicates": dups,
            "ok": dups == 0 and in_scope == input_rows,
        },
        "drop_reasons": dict(tally.drop_reasons.most_common()),
        "drop_reason_hours": {k: tally.drop_reason_seconds[k] / 3600 for k, _ in tally.drop_reasons.most_common()},
        "error_stages": dict(tally.error_stages.most_common()),
        "stages": tally.stages(),
        "error_reasons": dict(tally.error_reasons.most_common()),
        "audio_hours": {s: tally.audio_s[s] / 3600 for s in (CURATED, REJECTED, ERRORS)} | {"total": audio_total / 3600},
        "timing": {
            "wall_s": wall_s,
            "bookkeeping_s": float(sum(a.get("bookkeeping_s") or 0.0 for a in finished)),
            "attempts": len(attempts),
            "interrupted_attempts": len(attempts) - len(finished),
            "ray_start_s": [a.get("ray_start_s") for a in finished if a.get("ray_start_s") is not None],
            "stage_busy_s": dict(tally.stage_s),
        },
        "throughput": {
            "audio_hours_per_hour": (audio_total / wall_s) if wall_s > 0 else None,
            "clips_per_s": (accounted / wall_s) if wall_s > 0 else None,
            "stage_audio_s_per_busy_s": {k: (audio_total / v if v > 0 else None) for k, v in tally.stage_s.items()},
        },
        "scores": {
            "edu_score": {str(k): tally.edu_score.get(k, 0) for k in range(1, 6)},
            "edu_score_mean_hist": {"edges": MEAN_EDGES, "counts": tally.mean_hist.tolist()},
            "min_score": config.select.min_score,
            "judge_profile": config.judge.profile,
        },
        "durations": {s: {"edges": _edges(DURATION_EDGES), "counts": tally.duration_hist[s].tolist()} for s in SPLITS},
        "wer": ({"mean": tally.wer_sum / tally.wer_n, "rows": tally.wer_n,
                 "hist": {"edges": _edges(WER_EDGES), "counts": tally.wer_hist.tolist()}} if tally.wer_n else None),
        "samples": {o: [row for _, row, _ in rows] for o, rows in tally.picker.picked().items()},
        "scores_by": tally.groups(),
        "languages": tally.languages(),
        "whatif": whatif.summary(),
        "recordings": tally.recording_summary(),
        "attempts": [{k: a.get(k) for k in ("id", "status", "started", "wall_s", "execute_s", "ray_start_s", "bookkeeping_s",
                                             "input_rows", "finished_before", "row_groups", "cluster", "pools", "probe_s",
                                             "duplicate_id_check_s")} for a in attempts],
    }
    report["_listen"] = _players(out, tally.picker.picked(), whatif.margin_picks(), config, id_column, input_uri)
    return report


def _players(out: OutputDir, picked: dict[str, Any], margins: dict[str, Any], config: PipelineConfig, id_column: str,
             input_uri: str) -> dict[str, list[dict[str, Any]]]:
    """Audio for the first `output.report_clips` samples of each outcome and for the rows at
    each gate's margin (report.html only). A kept margin row is curated, so its audio is in
    curated/; a dropped one's, like every rejected sample's, is read back from the input, in
    the same one read."""
    k = config.output.report_clips
    if k <= 0:
        return {}
    picked = {o: rows[:k] for o, rows in picked.items()}
    kept = {o: rows for o, rows in margins.items() if o.endswith(": kept")}
    picked.update({o: rows for o, rows in margins.items() if o not in kept})
    source = None
    if input_uri and any(o != CURATED for o in picked):
        try:
            from ..sources.audio_by_id import SourceAudio

            source = SourceAudio(input_uri, config.source.storage, {"source": config.source.model_dump(mode="json")})
        except ValueError:
            source = None
    try:
        listen = players_for(picked, out.fs, id_column, source)
        if kept:  # one read of curated/ for every gate's kept side; players_for reads it for "curated"
            together = players_for({CURATED: [r for rows in kept.values() for r in rows]}, out.fs, id_column, None)
            together = iter(together.get(CURATED, []))
            listen.update({o: [next(together) for _ in rows] for o, rows in kept.items()})
        return listen
    except Exception as e:  # the input moved or went away: the report stays, without players
        return {"_error": [{"error": f"{type(e).__name__}: {e}"}]}


def write_report(out: OutputDir, report: dict[str, Any], config: PipelineConfig) -> None:
    listen = report.get("_listen") or {}
    out.write_json("report.json", {k: v for k, v in report.items() if k != "_listen"})
    out.write_bytes(out.path("report.html"), render_html(report, listen).encode())


def _edges(edges: list[float]) -> list[Any]:
    return [("inf" if math.isinf(e) else e) for e in edges]
