"""The accounting of a run, from the rows it stored: counts, hours, outcomes, stages, samples.

`RunTally` is fed one row group at a time (`add`) and keeps fixed-size histograms and
counters, so its memory does not grow with the number of clips (beyond 8 bytes per id for the
duplicate check, 16 at its peak; 8 more per row of a segmented run, for its recordings)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import contract as C
from ..report_audio import SamplePicker, stable_ranks
from ..run_state import CURATED, ERRORS, REJECTED, SPLITS

DURATION_EDGES = [0, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 600, 1800, 3600, math.inf]
MEAN_EDGES = list(np.round(np.linspace(1, 5, 33), 3))
WER_EDGES = list(np.round(np.linspace(0, 1, 21), 3)) + [math.inf]
STAGE_TIME_COLUMNS = {"decode": "decode_s", "transcribe": "asr_s", "judge": "judge_s"}
PIPELINE_STAGES = (C.DECODE, C.TRANSCRIBE, C.JUDGE, C.SELECT)
# Shown for each sample row (those present).
SAMPLE_COLUMNS = ("transcript", "edu_score", "edu_score_mean", "duration_s", "wer", C.DROP_REASON, C.ERROR_STAGE, C.ERROR)
# Source columns the score histogram is split by, when the input has them (Common Voice's).
GROUP_COLUMNS = ("accent", "accents", "gender", "age", "locale", "variant")
LANGUAGE_COLUMN = "language"
# The columns the tally reads (beside the id column and `GROUP_COLUMNS`).
TALLY_COLUMNS = ("parent_id", "segments", "duration_s", "edu_score", "edu_score_mean", "wer", C.DROP_REASON,
                 C.ERROR_STAGE, C.ERROR, "judge_model", "transcript", LANGUAGE_COLUMN, *STAGE_TIME_COLUMNS.values())
_MAX_GROUPS = 12
_MAX_LANGUAGES = 128  # Whisper knows 99; beyond this many distinct values, "(other)"
_MAX_REASON_KEYS = 40


def outcomes(column: Any) -> tuple[list, np.ndarray]:
    """A column's distinct values in the order they first appear (a null is one of them) and
    each row's code among them: what is counted and sampled by outcome, without a Python value
    per row."""
    encoded = pc.dictionary_encode(column.cast(pa.string()).combine_chunks(), null_encoding="encode")
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def durations(t: Any) -> np.ndarray:
    """Each row's duration in seconds (0 where unknown), as float64."""
    if "duration_s" not in t.column_names:
        return np.zeros(t.num_rows)
    return np.nan_to_num(t["duration_s"].to_numpy(zero_copy_only=False).astype(float), nan=0.0)


class RunTally:
    def __init__(self, keep_ids: Optional[list[str]], samples: int):
        self.rows: Counter = Counter()
        self.audio_s: Counter = Counter()
        self.drop_reasons: Counter = Counter()
        self.drop_reason_seconds: Counter = Counter()  # audio each reason removed
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
        # per language, per split: [rows, seconds]
        self.by_language: dict[str, dict[str, list[float]]] = {}

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
        if "edu_score_mean" in cols:
            m = t["edu_score_mean"].to_numpy(zero_copy_only=False).astype(float)
            self.mean_hist += np.histogram(m[~np.isnan(m)], bins=MEAN_EDGES)[0]
        if "wer" in cols:
            w = t["wer"].to_numpy(zero_copy_only=False).astype(float)
            w = w[~np.isnan(w)]
            self.wer_sum += float(w.sum())
            self.wer_n += len(w)
            self.wer_hist += np.histogram(w, bins=WER_EDGES)[0]
        # a rejected row's outcome is its drop reason, a failed one's the stage it failed in
        coded = None if split == CURATED else outcomes(t[C.DROP_REASON if split == REJECTED else C.ERROR_STAGE])
        self._count_stages(split, t, coded)
        self._count_recordings(split, t)
        self._pick_samples(split, t, ids, part, coded)
        self._count_groups(split, t)
        self._count_languages(split, t)
        if split == ERRORS:
            values, codes = coded
            for value, count in zip(values, np.bincount(codes, minlength=len(values)).tolist()):
                self.error_stages[value] += count
            for r in t[C.ERROR].to_pylist():
                key = (r or "")[:80]
                if key in self.error_reasons or len(self.error_reasons) < _MAX_REASON_KEYS:
                    self.error_reasons[key] += 1
                else:
                    self.error_reasons["(other)"] += 1

    def _count_stages(self, split: str, t: Any, coded: Optional[tuple[list, np.ndarray]]) -> None:
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
            reasons, codes = coded
            where = np.where(judged, 2, np.where(transcribed, 1, 0))
            counts = np.bincount(where * len(reasons) + codes, minlength=3 * len(reasons)).reshape(3, len(reasons))
            for stage, row in zip((C.DECODE, C.TRANSCRIBE, C.SELECT), counts.tolist()):
                for reason, count in zip(reasons, row):
                    if count:
                        self.stage_drops[stage][reason] += count
            for reason, count in zip(reasons, counts.sum(axis=0).tolist()):
                self.drop_reasons[reason] += count
            seconds = np.bincount(codes, weights=durations(t), minlength=len(reasons))
            for reason, s in zip(reasons, seconds.tolist()):
                self.drop_reason_seconds[reason] += s

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
                      coded: Optional[tuple[list, np.ndarray]]) -> None:
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
        values, codes = coded
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

    def _count_languages(self, split: str, t: Any) -> None:
        """Rows and seconds per value of `language` (the detected one, or the input's), per
        split: one bincount per row group, a Python step per distinct language only."""
        if LANGUAGE_COLUMN not in t.column_names:
            return
        values, codes = outcomes(t[LANGUAGE_COLUMN])
        rows = np.bincount(codes, minlength=len(values))
        seconds = np.bincount(codes, weights=durations(t), minlength=len(values))
        for value, n, s in zip(values, rows.tolist(), seconds.tolist()):
            key = value if value not in (None, "") else "(none)"
            if key not in self.by_language and len(self.by_language) >= _MAX_LANGUAGES:
                key = "(other)"
            acc = self.by_language.setdefault(key, {}).setdefault(split, [0, 0.0])
            acc[0] += n
            acc[1] += s

    def languages(self) -> Optional[list[dict[str, Any]]]:
        """Per language, most curated hours first: rows and hours curated, rejected and failed."""
        if not self.by_language:
            return None
        out = []
        for language, splits in self.by_language.items():
            entry: dict[str, Any] = {"language": language}
            for split in SPLITS:
                n, s = splits.get(split, (0, 0.0))
                entry[split] = int(n)
                entry[f"{split}_hours"] = s / 3600
            out.append(entry)
        return sorted(out, key=lambda e: (-e[f"{CURATED}_hours"], -e[CURATED], -e[REJECTED], str(e["language"])))

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
