"""What a run produced: `report.json`, a self-contained `report.html` with plots, a summary.

The report is computed from the output files, not from counters of one attempt, so it
describes the whole result across resumed attempts. It streams over the shards one at a time
and keeps fixed-size histograms, so its memory does not grow with the number of clips
(beyond 8 bytes per id for the duplicate check, 16 at its peak; 8 more per row of a
segmented run, for its recordings).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import contract as C
from .config import PipelineConfig
from .report_audio import SamplePicker, players_for, stable_ranks
from .sinks import CURATED, ERRORS, REJECTED, SPLITS, OutputDir

DURATION_EDGES = [0, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 600, 1800, 3600, math.inf]
MEAN_EDGES = list(np.round(np.linspace(1, 5, 33), 3))
WER_EDGES = list(np.round(np.linspace(0, 1, 21), 3)) + [math.inf]
STAGE_TIME_COLUMNS = {"decode": "decode_s", "transcribe": "asr_s", "judge": "judge_s"}
PIPELINE_STAGES = (C.DECODE, C.TRANSCRIBE, C.JUDGE, C.SELECT)
# Shown for each sample row (those present).
SAMPLE_COLUMNS = ("transcript", "edu_score", "edu_score_mean", "duration_s", "wer", C.DROP_REASON, C.ERROR_STAGE, C.ERROR)
# Source columns the score histogram is split by, when the input has them (Common Voice's).
GROUP_COLUMNS = ("accent", "accents", "gender", "age", "locale", "variant")
_MAX_GROUPS = 12
_MAX_REASON_KEYS = 40


def _outcomes(column: Any) -> tuple[list, np.ndarray]:
    """A column's distinct values in the order they first appear (a null is one of them) and
    each row's code among them: what is counted and sampled by outcome, without a Python value
    per row."""
    encoded = pc.dictionary_encode(column.cast(pa.string()).combine_chunks(), null_encoding="encode")
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


class _Tally:
    def __init__(self, keep_ids: Optional[list[str]], samples: int):
        self.rows: Counter = Counter()
        self.audio_s: Counter = Counter()
        self.drop_reasons: Counter = Counter()
        self.error_stages: Counter = Counter()
        self.error_reasons: Counter = Counter()
        self.stage_s: Counter = Counter()
        # Per stage: rows that reached it, drops there by reason (its errors: `error_stages`).
        self.stage_in: Counter = Counter()
        self.stage_drops: dict[str, Counter] = {s: Counter() for s in PIPELINE_STAGES}
        self.edu_score: Counter = Counter()
        self.mean_hist = np.zeros(len(MEAN_EDGES) - 1, dtype=np.int64)
        self.duration_hist = {s: np.zeros(len(DURATION_EDGES) - 1, dtype=np.int64) for s in SPLITS}
        self.wer_hist = np.zeros(len(WER_EDGES) - 1, dtype=np.int64)
        self.wer_sum = 0.0
        self.wer_n = 0
        self.id_hashes: list[np.ndarray] = []
        self.keep = frozenset(keep_ids) if keep_ids is not None else None
        self.parent_hashes: list[np.ndarray] = []  # input rows (recordings, when segmenting) in scope
        # segmented runs: per recording [speech s, kept s, score sum, scored segments]
        self.recordings: dict[str, list[float]] = {}
        self.picker = SamplePicker(samples)
        # edu_score counts per value of a source column (Common Voice `accent`, `gender`...)
        self.by_group: dict[str, Counter] = {}

    def add(self, split: str, t: Any, part: str = "") -> None:
        n = t.num_rows
        self.rows[split] += n
        ids = [str(x) for x in t.column(0).to_pylist()]
        id_hashes = np.fromiter((hash(x) for x in ids), dtype=np.int64, count=n)
        self.id_hashes.append(id_hashes)
        if "parent_id" not in t.column_names and self.keep is None:
            self.parent_hashes.append(id_hashes)  # the same array: a row is its own parent
        else:
            parents = [str(x) for x in t["parent_id"].to_pylist()] if "parent_id" in t.column_names else ids
            if self.keep is not None:
                parents = [p for p in parents if p in self.keep]
            self.parent_hashes.append(np.fromiter((hash(p) for p in parents), dtype=np.int64, count=len(parents)))
        cols = set(t.column_names)
        if "duration_s" in cols:
            d = t["duration_s"].to_numpy(zero_copy_only=False).astype(float)
            d = d[~np.isnan(d)]
            self.audio_s[split] += float(d.sum())
            self.duration_hist[split] += np.histogram(d, bins=DURATION_EDGES)[0]
        for stage, col in STAGE_TIME_COLUMNS.items():
            if col in cols:
                v = t[col].to_numpy(zero_copy_only=False).astype(float)
                self.stage_s[stage] += float(np.nansum(v))
        if "edu_score" in cols:
            self.edu_score.update(x for x in t["edu_score"].to_pylist() if x is not None)
            m = t["edu_score_mean"].to_numpy(zero_copy_only=False).astype(float)
            self.mean_hist += np.histogram(m[~np.isnan(m)], bins=MEAN_EDGES)[0]
        if "wer" in cols:
            w = t["wer"].to_numpy(zero_copy_only=False).astype(float)
            w = w[~np.isnan(w)]
            self.wer_sum += float(w.sum())
            self.wer_n += len(w)
            self.wer_hist += np.histogram(w, bins=WER_EDGES)[0]
        # a rejected row's outcome is its drop reason, a failed one's the stage it failed in
        outcomes = None if split == CURATED else _outcomes(t[C.DROP_REASON if split == REJECTED else C.ERROR_STAGE])
        self._count_stages(split, t, outcomes)
        self._count_recordings(split, t)
        self._pick_samples(split, t, ids, part, outcomes)
        self._count_groups(split, t)
        if split == ERRORS:
            values, codes = outcomes
            for value, count in zip(values, np.bincount(codes, minlength=len(values)).tolist()):
                self.error_stages[value] += count
            for r in t[C.ERROR].to_pylist():
                key = (r or "")[:80]
                if key in self.error_reasons or len(self.error_reasons) < _MAX_REASON_KEYS:
                    self.error_reasons[key] += 1
                else:
                    self.error_reasons["(other)"] += 1

    def _count_stages(self, split: str, t: Any, outcomes: Optional[tuple[list, np.ndarray]]) -> None:
        """Where each row went: a model stage writes its timing column (and the judge its
        model name) for every row it was given, so the columns tell how far a row got."""
        n = t.num_rows

        def present(col: str) -> np.ndarray:
            if col not in t.column_names:
                return np.zeros(n, dtype=bool)
            return np.asarray(t[col].is_valid().to_numpy(zero_copy_only=False), dtype=bool)

        transcribed = present("asr_s")
        judged = present("judge_s") | present("judge_model")
        failed = present(C.ERROR_STAGE)
        self.stage_in[C.DECODE] += n
        self.stage_in[C.TRANSCRIBE] += int(transcribed.sum())
        self.stage_in[C.JUDGE] += int(judged.sum())
        self.stage_in[C.SELECT] += int((judged & ~failed).sum())
        if split == REJECTED:  # dropped where it stopped: decode's filters, transcribe's, or select's
            reasons, codes = outcomes
            where = np.where(judged, 2, np.where(transcribed, 1, 0))
            counts = np.bincount(where * len(reasons) + codes, minlength=3 * len(reasons)).reshape(3, len(reasons))
            for stage, row in zip((C.DECODE, C.TRANSCRIBE, C.SELECT), counts.tolist()):
                for reason, count in zip(reasons, row):
                    if count:
                        self.stage_drops[stage][reason] += count
            for reason, count in zip(reasons, counts.sum(axis=0).tolist()):
                self.drop_reasons[reason] += count

    def _count_recordings(self, split: str, t: Any) -> None:
        if "parent_id" not in t.column_names or "segments" not in t.column_names or split == ERRORS:
            return
        scores = t["edu_score_mean"].to_pylist() if "edu_score_mean" in t.column_names else [None] * t.num_rows
        for parent, d, s in zip(t["parent_id"].to_pylist(), t["duration_s"].to_pylist(), scores):
            acc = self.recordings.setdefault(str(parent), [0.0, 0.0, 0.0, 0.0])
            acc[0] += d or 0.0
            acc[1] += (d or 0.0) if split == CURATED else 0.0
            if s is not None:
                acc[2] += s
                acc[3] += 1

    def recording_summary(self) -> Optional[dict[str, Any]]:
        """Per recording: the share of its speech kept and its segments' mean score."""
        if not self.recordings:
            return None
        kept = np.array([a[1] / a[0] if a[0] else 0.0 for a in self.recordings.values()])
        means = np.array([a[2] / a[3] for a in self.recordings.values() if a[3]])
        by_kept = sorted(self.recordings.items(), key=lambda kv: (kv[1][1] / kv[1][0] if kv[1][0] else 0.0, kv[0]))

        def row(k: str, a: list[float]) -> dict[str, Any]:
            return {"id": k, "speech_s": round(a[0], 2), "kept_share": round(a[1] / a[0], 3) if a[0] else 0.0,
                    "mean_score": round(a[2] / a[3], 3) if a[3] else None}

        return {"recordings": len(self.recordings), "kept_share_mean": float(kept.mean()),
                "kept_share_hist": {"edges": [0, 0.2, 0.4, 0.6, 0.8, 1.0001],
                                    "counts": np.histogram(kept, bins=[0, 0.2, 0.4, 0.6, 0.8, 1.0001])[0].tolist()},
                "mean_score_hist": {"edges": MEAN_EDGES, "counts": np.histogram(means, bins=MEAN_EDGES)[0].tolist()},
                "least_kept": [row(k, a) for k, a in by_kept[:5]], "most_kept": [row(k, a) for k, a in by_kept[-5:][::-1]]}

    def _pick_samples(self, split: str, t: Any, ids: list[str], part: str,
                      outcomes: Optional[tuple[list, np.ndarray]]) -> None:
        """Offer every row to the picker, outcome by outcome (in the order they first appear);
        only the few it keeps become Python dicts."""
        id_col = t.column_names[0]
        fields = t.select([id_col, *[c for c in SAMPLE_COLUMNS if c in t.column_names and c != id_col]])
        ranks = stable_ranks(ids)

        def row(i: int) -> dict[str, Any]:
            return fields.slice(i, 1).to_pylist()[0]

        if split == CURATED:
            self.picker.offer(CURATED, ids, ranks, np.arange(t.num_rows), row, part)
            return
        prefix = "rejected" if split == REJECTED else "error"
        values, codes = outcomes
        for code, value in enumerate(values):
            self.picker.offer(f"{prefix}: {value}", ids, ranks, np.flatnonzero(codes == code), row, part)

    def _count_groups(self, split: str, t: Any) -> None:
        if split == ERRORS or "edu_score" not in t.column_names:
            return
        scores = t["edu_score"].to_pylist()
        for col in GROUP_COLUMNS:
            if col not in t.column_names:
                continue
            counts = self.by_group.setdefault(col, Counter())
            for value, score in zip(t[col].to_pylist(), scores):
                if score is None:
                    continue
                key = str(value) if value not in (None, "") else "(none)"
                if len({g for g, _ in counts}) >= _MAX_GROUPS and not any(g == key for g, _ in counts):
                    key = "(other)"
                counts[(key, int(score))] += 1

    def groups(self) -> dict[str, dict[str, dict[str, int]]]:
        out: dict[str, dict[str, dict[str, int]]] = {}
        for col, counts in self.by_group.items():
            values = sorted({g for g, _ in counts}, key=lambda g: -sum(n for (h, _), n in counts.items() if h == g))
            if len(values) >= 2:
                out[col] = {g: {str(k): counts.get((g, k), 0) for k in range(1, 6)} for g in values}
        return out

    def stages(self) -> dict[str, Any]:
        out = {}
        for stage in PIPELINE_STAGES:
            dropped = dict(self.stage_drops[stage].most_common())
            errors = self.error_stages.get(stage, 0)
            out[stage] = {"rows_in": self.stage_in[stage], "errors": errors, "dropped": dropped,
                          "passed": self.stage_in[stage] - errors - sum(dropped.values()),
                          "busy_s": self.stage_s.get(stage)}
        return out

    def duplicates_and_parents(self) -> tuple[int, int]:
        """Rows whose id was seen before, and distinct input rows accounted for (each is in
        errors/ or the parent of output rows). Consumes the hashes."""
        rows = sum(len(h) for h in self.id_hashes)
        parents_are_ids = all(p is i for p, i in zip(self.parent_hashes, self.id_hashes))
        if parents_are_ids:
            self.parent_hashes = []  # so that the id chunks are freed once concatenated
        distinct_ids = _distinct(self.id_hashes)
        return rows - distinct_ids, distinct_ids if parents_are_ids else _distinct(self.parent_hashes)


def _distinct(chunks: list[np.ndarray]) -> int:
    """Distinct values over `chunks`, which it empties: one concatenated copy, sorted in place
    (np.unique would hold a sorted copy, a mask and its result besides)."""
    if not chunks:
        return 0
    h = np.concatenate(chunks)
    chunks.clear()
    h.sort()
    return int(np.count_nonzero(h[1:] != h[:-1])) + 1 if len(h) else 0


def build_report(
    out: OutputDir,
    config: PipelineConfig,
    *,
    input_rows: int,
    keep_ids: Optional[list[str]] = None,
    id_column: str = "id",
    input_uri: str = "",
) -> dict[str, Any]:
    tally = _Tally(keep_ids, config.output.report_samples)
    wanted = [id_column, "parent_id", "segments", "duration_s", "edu_score", "edu_score_mean", "wer", C.DROP_REASON, C.ERROR_STAGE,
              C.ERROR, "judge_model", "transcript", *GROUP_COLUMNS, *STAGE_TIME_COLUMNS.values()]
    for split in SPLITS:
        for path in out.part_files(split):
            with out.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                columns = [c for c in dict.fromkeys(wanted) if c in pf.schema_arrow.names]
                for i in range(pf.num_row_groups):  # a compacted file is read a row group at a time
                    tally.add(split, pf.read_row_group(i, columns=columns), path)
    accounted = sum(tally.rows[s] for s in SPLITS)
    dups, in_scope = tally.duplicates_and_parents()
    attempts = out.attempts()
    finished = [a for a in attempts if a.get("status") == "finished"]
    wall_s = float(sum(a.get("wall_s", 0.0) for a in finished))
    audio_total = float(sum(tally.audio_s.values()))
    report: dict[str, Any] = {
        "output": out.uri,
        "input": input_uri,
        "engines": (out.identity() or {}).get("engines", {}),
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
        "recordings": tally.recording_summary(),
        "attempts": [{k: a.get(k) for k in ("id", "status", "started", "wall_s", "execute_s", "ray_start_s", "bookkeeping_s",
                                             "input_rows", "finished_before", "row_groups", "cluster", "pools", "probe_s",
                                             "duplicate_id_check_s")} for a in attempts],
    }
    report["_listen"] = _players(out, tally.picker.picked(), config, id_column, input_uri)
    return report


def _players(out: OutputDir, picked: dict[str, Any], config: PipelineConfig, id_column: str,
             input_uri: str) -> dict[str, list[dict[str, Any]]]:
    """Audio for the first `output.report_clips` samples of each outcome (report.html only)."""
    k = config.output.report_clips
    if k <= 0:
        return {}
    picked = {o: rows[:k] for o, rows in picked.items()}
    source = None
    if input_uri and any(o != CURATED for o in picked):
        try:
            from .exports.source_audio import SourceAudio

            source = SourceAudio(input_uri, config.source.storage, {"source": config.source.model_dump(mode="json")})
        except ValueError:
            source = None
    try:
        return players_for(picked, out.fs, id_column, source)
    except Exception as e:  # the input moved or went away: the report stays, without players
        return {"_error": [{"error": f"{type(e).__name__}: {e}"}]}


def write_report(out: OutputDir, report: dict[str, Any], config: PipelineConfig) -> None:
    listen = report.get("_listen") or {}
    out.write_json("report.json", {k: v for k, v in report.items() if k != "_listen"})
    out.write_bytes(out.path("report.html"), render_html(report, listen).encode())


def _edges(edges: list[float]) -> list[Any]:
    return [("inf" if math.isinf(e) else e) for e in edges]


# ---- summary ---------------------------------------------------------------------------------
def format_summary(report: dict[str, Any]) -> str:
    a = report["accounting"]
    t = report["timing"]
    th = report["throughput"]
    lines = [
        "",
        f"  input rows      {a['input']:>10,}",
        f"  curated         {a['curated']:>10,}   ({report['audio_hours']['curated']:.3f} h of audio)",
        f"  rejected        {a['rejected']:>10,}",
        f"  errors          {a['errors']:>10,}",
        f"  accounting      {'OK' if a['ok'] else 'MISMATCH'}: {a['curated']} + {a['rejected']} + {a['errors']} = "
        + (f"{a['accounted']} rows (segments) from {a['recordings']} of {a['input']} recordings, "
           if a.get("recordings") is not None else f"{a['accounted']} of {a['input']} input rows, ")
        + f"{a['duplicates']} duplicates",
    ]
    for stage, c in (report.get("stages") or {}).items():
        fates = [f"{c['passed']} passed"] + [f"{n} {reason}" for reason, n in c["dropped"].items()]
        if c["errors"]:
            fates.append(f"{c['errors']} errors")
        lines.append(f"  {stage:<15} {c['rows_in']:>10,} in: " + ", ".join(fates))
    lines.append(f"  audio           {report['audio_hours']['total']:.3f} h in {t['wall_s']:.1f} s wall "
                 f"over {t['attempts']} attempt(s)")
    if th["audio_hours_per_hour"]:
        lines.append(f"  throughput      {th['audio_hours_per_hour']:.2f} audio-hours per hour, "
                     f"{th['clips_per_s']:.2f} clips/s")
    busy = t["stage_busy_s"]
    if busy:
        lines.append("  stage busy time " + ", ".join(f"{k} {v:.1f} s" for k, v in busy.items()))
    rec = report.get("recordings")
    if rec:
        lines.append(f"  recordings      {rec['recordings']:>10,}   mean share of speech kept {rec['kept_share_mean']:.2f}")
    if report.get("wer"):
        lines.append(f"  WER vs reference mean {report['wer']['mean']:.3f} over {report['wer']['rows']} rows")
    return "\n".join(lines)


# ---- HTML ------------------------------------------------------------------------------------
def render_html(report: dict[str, Any], listen: Optional[dict[str, list[dict[str, Any]]]] = None) -> str:
    figures = _figures(report)
    a = report["accounting"]
    rows = [
        ("Input rows", a["input"]), ("Curated", a["curated"]), ("Rejected", a["rejected"]),
        ("Errors", a["errors"]), ("Duplicates", a["duplicates"]),
        ("Accounting", "OK" if a["ok"] else "MISMATCH"),
        ("Audio (h)", f"{report['audio_hours']['total']:.3f}"),
        ("Wall time (s)", f"{report['timing']['wall_s']:.1f}"),
        ("Audio-hours per hour", _fmt(report["throughput"]["audio_hours_per_hour"])),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>audiocurate report</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}th{background:#f4f4f4}.plots img{max-width:560px;margin:6px}"
        ".ok{color:#070}.bad{color:#b00}</style></head><body>",
        f"<h1>audiocurate report</h1><p>Input <code>{html.escape(str(report['input']))}</code>, "
        f"output <code>{html.escape(str(report['output']))}</code></p>",
        "<table id='summary'>" + "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>",
        _stages_table(report.get("stages") or {}),
        _recordings_table(report.get("recordings")),
        "<h2>Plots</h2><div class='plots'>",
        *[f"<figure><img class='plot' alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
          f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, b64 in figures],
        "</div>",
    ]
    parts.append(_samples_html(report.get("samples") or {}, listen))
    parts.append(_PLAYER_CHECK)
    parts.append("</body></html>")
    return "\n".join(parts)


# Marks each player with what the browser made of its clip (tests read it back).
_PLAYER_CHECK = ("<script>document.querySelectorAll('audio').forEach(a=>{"
                 "a.addEventListener('loadedmetadata',()=>{a.dataset.duration=a.duration.toFixed(2)});"
                 "a.addEventListener('error',()=>{a.dataset.error='1'});a.load();});</script>")


def _samples_html(samples: dict[str, list[dict[str, Any]]], listen: Optional[dict[str, list[dict[str, Any]]]]) -> str:
    """Per outcome (curated, each drop reason, each error stage): sample rows, the first ones
    with a player."""
    listen = listen or {}
    parts = ["<h2>Listen: samples per outcome</h2>"]
    if "_error" in listen:
        parts.append(f"<p>No clips: {html.escape(listen['_error'][0]['error'])}</p>")
    for outcome, rows in samples.items():
        if not rows:
            continue
        cols = [c for c in rows[0].keys() if c != "audio"]
        parts.append(f"<h3>{html.escape(outcome)}</h3><table class='samples'><tr><th>listen</th>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        players = listen.get(outcome, [])
        for i, r in enumerate(rows):
            uri = players[i].get("audio") if i < len(players) else None
            player = f"<audio controls preload='metadata' src='{uri}'></audio>" if uri else ""
            parts.append(f"<tr><td>{player}</td>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols)
                         + "</tr>")
        parts.append("</table>")
    return "".join(parts)


def _recordings_table(rec: Optional[dict[str, Any]]) -> str:
    """Segmented runs: per recording, the share of its speech kept and its mean score."""
    if not rec:
        return ""
    rows = "".join(f"<tr><td>{html.escape(which)}</td><td>{html.escape(r['id'])}</td><td>{r['speech_s']}</td>"
                   f"<td>{r['kept_share']}</td><td>{_fmt(r['mean_score'])}</td></tr>"
                   for which, key in (("least kept", "least_kept"), ("most kept", "most_kept")) for r in rec[key])
    return (f"<h2>Recordings</h2><p>{rec['recordings']} recordings; mean share of speech kept "
            f"{rec['kept_share_mean']:.2f}</p><table id='recordings'><tr><th></th><th>recording</th><th>speech s</th>"
            f"<th>kept share</th><th>mean score</th></tr>{rows}</table>")


def _stages_table(stages: dict[str, Any]) -> str:
    """Per stage: rows in, passed on, dropped by each filter's reason, errors, busy time."""
    if not stages:
        return ""
    head = "<h2>Stages and filters</h2><table id='stages'><tr><th>stage</th><th>rows in</th><th>passed</th>" \
           "<th>dropped (by reason)</th><th>errors</th><th>busy s</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{c['rows_in']}</td><td>{c['passed']}</td><td>"
        + html.escape(", ".join(f"{r} {n}" for r, n in c["dropped"].items())) + f"</td><td>{c['errors']}</td>"
        f"<td>{_fmt(c['busy_s'])}</td></tr>" for name, c in stages.items())
    return head + body + "</table>"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


# Text drawn from data (column values and names, reasons, stage names) is drawn as written,
# whatever the caller's rcParams: no mathtext (`$x_{1$` would raise, `$x$` turn italic) and no TeX.
_LITERAL = {"parse_math": False, "usetex": False}


def _literal(texts: Any) -> None:
    for t in texts:
        t.set_parse_math(False)
        t.set_usetex(False)


def _bars(ax: Any, labels: list[Any], values: Any, horizontal: bool = False, **kw: Any) -> None:
    """Bars at 0..n-1 with literal tick labels: a categorical axis would make its labels at draw
    time, parsed as mathtext."""
    pos = np.arange(len(labels))
    if horizontal:
        ax.barh(pos, values, **kw)
        ax.set_yticks(pos, [str(x) for x in labels], **_LITERAL)
    else:
        ax.bar(pos, values, **kw)
        ax.set_xticks(pos, [str(x) for x in labels], **_LITERAL)


def _figures(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's plots as (name, base64 PNG)."""
    figs = []
    for name, fig in _draw_figures(report):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=80)
        figs.append((name, base64.b64encode(buf.getvalue()).decode()))
    return figs


def _draw_figures(report: dict[str, Any]) -> list[tuple[str, Any]]:
    # Figures drawn without pyplot: no backend switch, no global figure registry, so a
    # notebook that builds a report keeps its own matplotlib state.
    from matplotlib.figure import Figure

    figs: list[tuple[str, Any]] = []

    def subplots(*grid: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*grid)

    sc = report["scores"]
    fig, ax = subplots(1, 2, figsize=(9, 3.2))
    ks = list(sc["edu_score"].keys())
    _bars(ax[0], ks, [sc["edu_score"][k] for k in ks],
          color=["#c44" if int(k) < sc["min_score"] else "#4a4" for k in ks])
    ax[0].set_title("edu_score (kept: green)", **_LITERAL)
    edges = sc["edu_score_mean_hist"]["edges"]
    ax[1].stairs(sc["edu_score_mean_hist"]["counts"], edges, fill=True)
    ax[1].set_title("edu_score_mean (judge's expected score)", **_LITERAL)
    figs.append(("Score histogram", fig))

    fig, ax = subplots(figsize=(9, 3.2))
    labels = [f"<{e}" if e != "inf" else "longer" for e in report["durations"][CURATED]["edges"][1:]]
    bottom = np.zeros(len(labels))
    for split, color in ((CURATED, "#4a4"), (REJECTED, "#c84"), (ERRORS, "#c44")):
        counts = np.array(report["durations"][split]["counts"])
        _bars(ax, labels, counts, bottom=bottom, label=split, color=color)
        bottom += counts
    ax.set_title("Clip duration (s)", **_LITERAL)
    _literal(ax.legend().get_texts())
    ax.tick_params(axis="x", rotation=60)
    figs.append(("Duration histogram", fig))

    fig, ax = subplots(figsize=(9, 3.2))
    reasons = {**{f"drop: {k}": v for k, v in report["drop_reasons"].items()},
               **{f"error: {k}": v for k, v in report["error_stages"].items()}}
    if reasons:
        _bars(ax, list(reasons.keys()), list(reasons.values()), horizontal=True, color="#c84")
    ax.set_title("Drop reasons and errors by stage", **_LITERAL)
    figs.append(("Drop reasons", fig))

    fig, ax = subplots(1, 2, figsize=(9, 3.2))
    busy = report["timing"]["stage_busy_s"]
    _bars(ax[0], list(busy.keys()), list(busy.values()), color="#48c")
    ax[0].set_title("Busy time per stage (s)", **_LITERAL)
    tput = {k: v for k, v in report["throughput"]["stage_audio_s_per_busy_s"].items() if v}
    _bars(ax[1], list(tput.keys()), list(tput.values()), color="#4ac")
    ax[1].set_title("Audio s per busy s, per worker", **_LITERAL)
    figs.append(("Stage time and throughput", fig))

    for col, groups in (report.get("scores_by") or {}).items():
        fig, ax = subplots(figsize=(9, 3.2))
        names = list(groups)
        bottom = np.zeros(len(names))
        for k, color in zip(range(1, 6), ("#c44", "#c84", "#cc4", "#8c4", "#4a4")):
            counts = np.array([groups[g][str(k)] for g in names])
            _bars(ax, names, counts, bottom=bottom, label=f"score {k}", color=color)
            bottom += counts
        ax.set_title(f"edu_score by {col}", **_LITERAL)
        _literal(ax.legend(fontsize=7).get_texts())
        ax.tick_params(axis="x", rotation=45)
        figs.append((f"Scores by {col}", fig))

    if report.get("wer"):
        fig, ax = subplots(figsize=(6, 3.2))
        e = report["wer"]["hist"]["edges"]
        _bars(ax, [f"{x}" for x in e[:-1]], report["wer"]["hist"]["counts"], color="#888")
        ax.set_title(f"WER vs reference (mean {report['wer']['mean']:.3f})", **_LITERAL)
        ax.tick_params(axis="x", rotation=60)
        figs.append(("WER distribution", fig))
    return figs
