"""Threshold what-ifs: for every numeric gate whose signal the rows keep, the hours it would
keep at each threshold, from curated/ and rejected/ alone (no model, no rerun).

A gate decides the rows that reach it with every other gate passed: the curated rows and the
ones it rejected itself (its drop reason). A row another gate rejected stays rejected at any
threshold of this one, so it is left out of the curve (it is in the histogram). The curve at
the current threshold gives back the curated hours; for a stricter threshold it is exact; for a
looser one it is an upper bound, since a row this gate rejected never met the gates after it.

Memory is fixed per gate: hours and rows on a fixed set of bins (the current threshold is one
of their edges, so the curve is exact there), per split and per group (the first
`MAX_GROUPS` values of a group column each, the rest as one), and the few rows nearest the
threshold on each side, to listen to."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import contract as C
from ..report_audio import stable_ranks
from ..run_state import CURATED, REJECTED
from .tally import LANGUAGE_COLUMN, durations, outcomes

# Columns a what-if is split by, where the input (or the run) has them: where a clip comes
# from, who speaks (Common Voice's `client_id`), and its language.
GROUP_COLUMNS = ("source", "client_id", "speaker", "speaker_id", LANGUAGE_COLUMN)
MAX_GROUPS = 128
GROUPS_SHOWN = 6
MARGIN_CLIPS = 2  # per side of a threshold: 4 clips of <= 32 KB (base64) per gate in the page
SHARES = (1.0, 0.95, 0.9, 0.8, 0.5)  # the thresholds that keep these shares of a gate's hours


@dataclasses.dataclass(frozen=True)
class Gate:
    """A numeric gate as the report replays it: rows are kept when `column` is at least
    (`keep_above`) or at most the threshold. `threshold` None: measured, not gated (the curve
    shows what a gate would cost). A row without a value is kept at every threshold when
    `null_kept`, else at none. `values` gives the value the gate compares when it is not the
    column alone (it reads `reads` as well)."""

    label: str
    column: str
    keep_above: bool
    threshold: Optional[float]
    setting: str
    drop_reason: Optional[str]
    edges: tuple[float, ...]
    null_kept: bool = True
    log_scale: bool = False
    reads: tuple[str, ...] = ()
    values: Optional[Callable[[Any], np.ndarray]] = None


def _steps(lo: float, hi: float, step: float) -> tuple[float, ...]:
    return tuple(np.round(np.arange(lo, hi + step / 2, step), 6).tolist())


# Bins of the signals of profiles/quality.yaml (audiocurate.signals), by column.
SIGNAL_EDGES = {
    "clip_fraction": (0.0, *np.round(np.geomspace(1e-5, 1.0, 61), 8).tolist()),
    "background_snr_db": _steps(0, 100, 0.5),
    "decay_db_100ms": _steps(0, 100, 0.5),
    "second_voice_ratio": _steps(0, 1, 0.005),
    "bandwidth_hz": _steps(0, 8000, 50),
}


def column_values(t: Any, column: str) -> np.ndarray:
    """A numeric column as float64, NaN for null or absent."""
    if column not in t.column_names:
        return np.full(t.num_rows, np.nan)
    return t[column].to_numpy(zero_copy_only=False).astype(float)


def gates_of(config: Any) -> list[Gate]:
    """The numeric gates of a run's configuration, gated or only measured, in run order of
    the built-ins (the signal gates that are on among them), then `filters.custom`'s
    one-threshold signal gates."""
    from ..filters import FILTERS
    from ..filters.dnsmos import LOW_DNSMOS
    from ..filters.language import LANGUAGE, LOW_CONFIDENCE, english_trusted_above, spoken_language_detected
    from ..filters.score import LOW_EDU_SCORE
    from ..filters.signal_gate import SignalGate
    from ..filters.wer import WER_ABOVE_MAX

    f = config.filters
    lang = f.language
    detecting = spoken_language_detected(config.asr)
    allowed = set(lang.allowed) if lang.allowed else None
    if allowed is None and detecting and config.asr.language:
        allowed = {config.asr.language}  # as the filter: heard beside a fixed language, that one only

    english_above = english_trusted_above(config.asr) if detecting else None

    def language_prob(t: Any) -> np.ndarray:
        v = column_values(t, "language_prob")
        if english_above is not None and "avg_logprob" in t.column_names:  # no LID needed: kept at any threshold
            v[np.isnan(v) & (column_values(t, "avg_logprob") >= english_above)] = 1.0
        if allowed is not None and LANGUAGE_COLUMN in t.column_names:  # not allowed: rejected at any threshold
            ok = pc.fill_null(pc.is_in(t[LANGUAGE_COLUMN], pa.array(sorted(allowed), pa.string())), False)
            v[~np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
        return v

    gates = [
        Gate("judge score", "edu_score", True, config.select.min_score, "select.min_score", LOW_EDU_SCORE,
             (1.0, 2.0, 3.0, 4.0, 5.0), null_kept=False),
        Gate("WER against the reference", "wer", False, f.wer.max_wer, "filters.wer.max_wer", WER_ABOVE_MAX,
             _steps(0, 2, 0.02)),
        Gate("language probability", "language_prob", True, (lang.min_prob or None) if detecting else None,
             "filters.language.min_prob", LANGUAGE, _steps(0, 1, 0.01), null_kept=False,
             reads=(LANGUAGE_COLUMN, "avg_logprob") if english_above is not None else (LANGUAGE_COLUMN,),
             values=language_prob),
        Gate("mean token log-probability", "avg_logprob", True, lang.min_avg_logprob, "filters.language.min_avg_logprob",
             LOW_CONFIDENCE, _steps(-3, 0, 0.02)),
        Gate("DNSMOS OVRL", "dnsmos_ovrl", True, f.dnsmos.min_ovrl, "filters.dnsmos.min_ovrl", LOW_DNSMOS,
             _steps(1, 5, 0.05)),
        Gate("DNSMOS SIG", "dnsmos_sig", True, None, "(none)", None, _steps(1, 5, 0.05)),
        Gate("DNSMOS BAK", "dnsmos_bak", True, None, "(none)", None, _steps(1, 5, 0.05)),
    ]
    sections = [(FILTERS.get(name), getattr(f, name), f"filters.{name}") for name in FILTERS.declared()
                if issubclass(FILTERS.get(name), SignalGate) and getattr(f, name).enabled]
    for cls, settings, where in sections:
        gate = _signal_gate(cls, settings, where)
        if gate is not None:
            gates.append(gate)
    for i, spec in enumerate(f.custom):
        gate = _custom_signal_gate(spec.type, spec.args, f"filters.custom[{i}].args")
        if gate is not None:
            gates.append(gate)
    return gates


def _custom_signal_gate(type_: str, args: dict[str, Any], where: str) -> Optional[Gate]:
    """A custom filter as a `Gate`, when it is a signal gate (an output recorded before the
    gates were sections of `filters` names them there)."""
    from ..core.registry import import_object
    from ..filters.signal_gate import SignalGate

    try:
        cls = import_object(type_)
    except Exception:  # the run's own check names it; the report goes on without this gate
        return None
    if not (isinstance(cls, type) and issubclass(cls, SignalGate)):
        return None
    try:
        settings = cls.settings(**args)
    except Exception:  # the run refused these arguments with its own message
        return None
    return _signal_gate(cls, settings, where)


def _signal_gate(cls: Any, settings: Any, where: str) -> Optional[Gate]:
    """A signal gate as a `Gate`, when it has one threshold (or is the clipping gate, whose
    threshold holds only for runs of `min_run` samples)."""
    from ..filters.clipping import CLIPPED, ClippingGate

    if issubclass(cls, ClippingGate):
        min_run = settings.min_run

        def clipped(t: Any) -> np.ndarray:
            fraction, run = column_values(t, "clip_fraction"), column_values(t, "clip_longest_run")
            return np.where(np.isnan(run), np.nan, np.where(run >= min_run, fraction, 0.0))

        return Gate(f"clipped share (runs of {min_run}+)", "clip_fraction", False, settings.max_clip_fraction,
                    f"{where}.max_clip_fraction", CLIPPED, SIGNAL_EDGES["clip_fraction"], log_scale=True,
                    reads=("clip_longest_run",), values=clipped)
    if not (cls.column and cls.threshold):
        return None
    threshold = getattr(settings, cls.threshold)
    edges = SIGNAL_EDGES.get(cls.column)
    if edges is None:
        if not threshold:
            return None  # no range known to bin an unknown signal over
        edges = tuple(np.linspace(threshold - 2 * abs(threshold), threshold + 2 * abs(threshold), 81).tolist())
    return Gate(cls.column, cls.column, not cls.reject_above, threshold, f"{where}.{cls.threshold}",
                cls.drop_reason, edges)


class _GroupIndex:
    """Each value of one group column -> a small index: the first `MAX_GROUPS` values seen,
    then one shared index for the rest."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def codes(self, column: Any) -> np.ndarray:
        encoded = pc.dictionary_encode(column.cast(pa.string()).combine_chunks(), null_encoding="encode")
        values = pc.fill_null(encoded.dictionary, "(none)")  # the distinct values only, not every row
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if len(self.names) < MAX_GROUPS:  # new values, in order of first appearance, until the index is full
            new = pc.filter(values, pc.invert(pc.is_in(values, pa.array(self.names, pa.string()))))
            self.names.extend(new[:MAX_GROUPS - len(self.names)].to_pylist())
        found = pc.index_in(values, pa.array(self.names, pa.string()))
        mapped = pc.fill_null(found, MAX_GROUPS).to_numpy(zero_copy_only=False).astype(np.int64)
        return mapped[codes] if len(codes) else codes


class _Margin:
    """The `k` rows nearest the threshold on one side, nearest first (ties: by a hash of the
    id, so the pick does not depend on the order of the shards)."""

    def __init__(self, k: int):
        self.k = k
        self.rows: list[tuple[float, int, str, dict[str, Any], str]] = []

    def offer(self, distance: np.ndarray, rows: np.ndarray, ids: Any, row: Callable[[int], dict[str, Any]],
              part: str) -> None:
        if self.k <= 0 or not len(rows):
            return
        d = distance[rows]
        if len(self.rows) == self.k:  # already k: only rows as near as the farthest of them
            rows, d = rows[d <= self.rows[-1][0]], d[d <= self.rows[-1][0]]
            if not len(rows):
                return
        if len(rows) > self.k:  # only rows as near as the k-th nearest can be kept (ties included)
            kth = np.partition(d, self.k - 1)[self.k - 1]
            rows, d = rows[d <= kth], d[d <= kth]
        # a signal with few values (a score) ties many rows: rank them all, build only k rows
        cids = [str(c) for c in pc.take(ids, pa.array(rows)).to_pylist()]
        ranks = stable_ranks(cids)
        for j in np.lexsort((ranks, d))[:self.k].tolist():
            self.rows.append((float(d[j]), int(ranks[j]), cids[j], row(int(rows[j])), part))
        self.rows = sorted(self.rows, key=lambda r: r[:3])[:self.k]


class GateTally:
    """One gate's histograms (hours and rows per bin: curated, rejected by this gate, rejected
    by another; the last bin holds the rows without a value), per group, and its margins."""

    CATEGORIES = ("curated", "rejected_here", "rejected_other")

    def __init__(self, gate: Gate, margin_clips: int):
        self.gate = gate
        self.margin_clips = margin_clips
        self.edges: Optional[np.ndarray] = None  # set by the first row group with the column
        self.threshold: Optional[float] = None
        self.hours: Optional[np.ndarray] = None
        self.rows: Optional[np.ndarray] = None
        self.group_hours: dict[str, np.ndarray] = {}
        self.kept = _Margin(margin_clips)
        self.dropped = _Margin(margin_clips)

    def _start(self, column_type: pa.DataType) -> None:
        """Bins on the gate's edges plus the threshold, which is rounded as the column is
        stored (a float32 column holds 0.8 as 0.800000012: the row that scored 0.8 is at it)."""
        t = self.gate.threshold
        if t is not None and pa.types.is_float32(column_type):
            t = float(np.float32(t))
        self.threshold = t
        self.edges = np.unique(np.array([*self.gate.edges, *([t] if t is not None else [])], dtype=float))
        bins = len(self.edges) + 2  # below the first edge ... above the last, then the nulls
        self.hours = np.zeros((3, bins))
        self.rows = np.zeros((3, bins), dtype=np.int64)

    def bins(self, v: np.ndarray) -> np.ndarray:
        """Bin i of len(edges)+1 holds edges[i-1] <= v < edges[i] for a gate that keeps high
        values, edges[i-1] < v <= edges[i] for one that keeps low ones, so that `kept` at
        each edge is a sum of whole bins; the last bin holds the nulls."""
        b = np.searchsorted(self.edges, v, side="right" if self.gate.keep_above else "left")
        return np.where(np.isnan(v), len(self.edges) + 1, b)

    def add(self, split: str, t: Any, part: str, here: np.ndarray, groups: dict[str, np.ndarray], dur: np.ndarray,
            row: Callable[[int], dict[str, Any]]) -> None:
        """`here`: per row, rejected by this gate; `groups`: per group column, each row's group;
        `dur`: each row's seconds; `row(i)`: the fields of row i shown at the margin."""
        g = self.gate
        if self.edges is None:
            self._start(t.schema.field(g.column).type)
        v = g.values(t) if g.values else column_values(t, g.column)
        b = self.bins(v)
        nb = self.hours.shape[1]
        category = np.zeros(t.num_rows, dtype=np.int64) if split == CURATED else np.where(here, 1, 2)
        self.hours += np.bincount(category * nb + b, weights=dur, minlength=3 * nb).reshape(3, nb)
        self.rows += np.bincount(category * nb + b, minlength=3 * nb).reshape(3, nb)
        population = np.flatnonzero(category < 2)
        for column, codes in groups.items():
            acc = self.group_hours.setdefault(column, np.zeros((MAX_GROUPS + 1, nb)))
            acc += np.bincount(codes[population] * nb + b[population], weights=dur[population],
                               minlength=(MAX_GROUPS + 1) * nb).reshape(MAX_GROUPS + 1, nb)
        if self.threshold is not None and self.margin_clips > 0:
            distance = np.abs(v - self.threshold)
            known = population[~np.isnan(v[population])]
            passes = v[known] >= self.threshold if g.keep_above else v[known] <= self.threshold
            ids = t.column(0)
            self.kept.offer(distance, known[passes], ids, row, part)
            self.dropped.offer(distance, known[~passes], ids, row, part)

    def kept_curve(self, hours: np.ndarray) -> np.ndarray:
        """Per edge, what a population's bins (nulls last) keep with the threshold at that edge."""
        finite, null = hours[:-1], hours[-1]
        if self.gate.keep_above:  # kept: the bins above edge j, i.e. from bin j+1 on
            kept = np.cumsum(finite[::-1])[::-1][1:]
        else:  # kept: bins 0..j
            kept = np.cumsum(finite)[:-1]
        return kept + (null if self.gate.null_kept else 0.0)

    def summary(self, group_names: dict[str, list[str]]) -> Optional[dict[str, Any]]:
        if self.edges is None or not self.rows[:, :-1].sum():
            return None  # the column is absent or never has a value
        g = self.gate
        population_hours = (self.hours[0] + self.hours[1]) / 3600
        population_rows = self.rows[0] + self.rows[1]
        kept_h = self.kept_curve(population_hours)
        kept_rows = self.kept_curve(population_rows.astype(float)).astype(np.int64)
        at = None if self.threshold is None else int(np.searchsorted(self.edges, self.threshold))
        total = float(population_hours.sum())
        shares = {}
        for share in SHARES:  # the strictest threshold that keeps at least `share` of the hours
            ok = np.flatnonzero(kept_h >= share * total - 1e-12)
            if len(ok) and total > 0:
                j = int(ok.max() if g.keep_above else ok.min())
                shares[str(share)] = {"threshold": float(self.edges[j]), "kept_hours": float(kept_h[j])}
        by_group = {}
        for column, acc in self.group_hours.items():
            names = group_names[column]
            if len(names) + (acc[MAX_GROUPS].sum() > 0) < 2:
                continue
            totals = acc.sum(axis=1)
            order = [i for i in np.argsort(-totals[:len(names)], kind="stable") if totals[i] > 0]
            shown, rest = order[:GROUPS_SHOWN], order[GROUPS_SHOWN:]
            other = acc[MAX_GROUPS] + acc[rest].sum(axis=0)
            entries = [(names[i], acc[i]) for i in shown] + ([("(other)", other)] if other.sum() > 0 else [])
            by_group[column] = [{"group": name, "population_hours": float(h.sum() / 3600),
                                 "kept_hours": _hours(self.kept_curve(h) / 3600)} for name, h in entries]
        return {
            "label": g.label, "column": g.column, "setting": g.setting, "threshold": g.threshold,
            "kept_when": ">=" if g.keep_above else "<=", "drop_reason": g.drop_reason,
            "null_rows": int(population_rows[-1]), "null_kept": g.null_kept, "log_scale": g.log_scale,
            "population_hours": total, "population_rows": int(population_rows.sum()),
            "thresholds": self.edges.tolist(), "kept_hours": _hours(kept_h), "kept_rows": kept_rows.tolist(),
            "kept_hours_now": None if at is None else float(kept_h[at]),
            "kept_rows_now": None if at is None else int(kept_rows[at]),
            # the run's own routing, replayed: False when the rows were routed under other settings
            "replays_run": None if at is None else bool(kept_rows[at] == self.rows[0].sum()),
            "for_share": shares,
            # per bin (edges[i-1] .. edges[i], the ends open; nulls last), hours by where the rows went
            "hist": {c: _hours(self.hours[i] / 3600) for i, c in enumerate(self.CATEGORIES)},
            "by_group": by_group,
            "margin": {"kept": [r for _, _, _, r, _ in self.kept.rows],
                       "dropped": [r for _, _, _, r, _ in self.dropped.rows]},
        }


class WhatIfTally:
    """Every gate's `GateTally`, fed the same row groups as the run's tally."""

    def __init__(self, gates: list[Gate], margin_clips: int = MARGIN_CLIPS):
        self.gates = [GateTally(g, margin_clips) for g in gates]
        self.groups: dict[str, _GroupIndex] = {}

    @property
    def columns(self) -> list[str]:
        """What it reads beside the run's tally."""
        return list(dict.fromkeys([c for g in self.gates for c in (g.gate.column, *g.gate.reads)] + list(GROUP_COLUMNS)))

    def add(self, split: str, t: Any, part: str) -> None:
        names = set(t.column_names)
        if split not in (CURATED, REJECTED) or not any(g.gate.column in names for g in self.gates):
            return
        reasons, codes = outcomes(t[C.DROP_REASON]) if split == REJECTED else ([], None)
        groups = {c: self.groups.setdefault(c, _GroupIndex()).codes(t[c]) for c in GROUP_COLUMNS if c in names}
        dur = durations(t)
        id_col = t.column_names[0]
        for g in self.gates:
            if g.gate.column not in names:
                continue
            if g.gate.drop_reason in reasons:
                here = codes == reasons.index(g.gate.drop_reason)
            else:
                here = np.zeros(t.num_rows, dtype=bool)
            shown = [c for c in dict.fromkeys([id_col, g.gate.column, *g.gate.reads, "duration_s", "transcript",
                                               C.DROP_REASON]) if c in names]

            def row(i: int, shown: list[str] = shown) -> dict[str, Any]:
                return t.select(shown).slice(i, 1).to_pylist()[0]

            g.add(split, t, part, here, groups, dur, row)

    def summary(self) -> list[dict[str, Any]]:
        names = {c: idx.names for c, idx in self.groups.items()}
        return [s for s in (g.summary(names) for g in self.gates) if s is not None]

    def margin_picks(self) -> dict[str, list[tuple[str, dict[str, Any], str]]]:
        """Per gate and side, (id, row, part) of the rows at its margin, for the players."""
        out = {}
        for g in self.gates:
            for side, margin in (("kept", g.kept), ("dropped", g.dropped)):
                if margin.rows:
                    out[margin_key(g.gate.column, side)] = [(cid, row, part) for _, _, cid, row, part in margin.rows]
        return out


def _hours(h: np.ndarray) -> list[float]:
    """Hours to the nearest 3.6 microseconds: report.json stays small with hundreds of bins."""
    return np.round(h, 9).tolist()


def margin_key(column: str, side: str) -> str:
    return f"margin: {column}: {side}"
