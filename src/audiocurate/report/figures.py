"""The report's plots, drawn without pyplot (no backend switch, no global figure registry), so
a notebook that builds a report keeps its own matplotlib state."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from ..run_state import CURATED, ERRORS, REJECTED

KEPT, DROPPED_HERE, DROPPED_ELSEWHERE, THRESHOLD = "#4a4", "#c84", "#bbb", "#c00"

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


def png_base64(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode()


def _subplots(*grid: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, squeeze=False)


def figures(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's general plots as (name, base64 PNG)."""
    return [(name, png_base64(fig)) for name, fig in draw_figures(report)]


def draw_figures(report: dict[str, Any]) -> list[tuple[str, Any]]:
    figs: list[tuple[str, Any]] = []

    def subplots(*grid: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
        fig, axes = _subplots(*(grid or (1, 1)), figsize=figsize)
        return fig, (axes[0, 0] if axes.size == 1 else axes.ravel())

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

    languages = report.get("languages")
    if languages:
        fig, ax = subplots(figsize=(9, 3.2))
        names = [e["language"] for e in languages[:30]]
        bottom = np.zeros(len(names))
        for split, color in ((CURATED, KEPT), (REJECTED, DROPPED_HERE), (ERRORS, "#c44")):
            hours = np.array([e[f"{split}_hours"] for e in languages[:30]])
            _bars(ax, names, hours, bottom=bottom, label=split, color=color)
            bottom += hours
        ax.set_title("Hours per language", **_LITERAL)
        ax.set_ylabel("hours")
        _literal(ax.legend(fontsize=7).get_texts())
        ax.tick_params(axis="x", rotation=45)
        figs.append(("Hours per language", fig))
    return figs


def _bin_bounds(edges: np.ndarray) -> np.ndarray:
    """Where to draw the gate's bins: its edges, with the two open-ended bins one step wide."""
    lo = edges[0] - (edges[1] - edges[0] if len(edges) > 1 else 1.0)
    hi = edges[-1] + (edges[-1] - edges[-2] if len(edges) > 1 else 1.0)
    return np.concatenate([[lo], edges, [hi]])


def draw_gate(gate: dict[str, Any]) -> Any:
    """One gate: its signal's histogram in hours (kept, rejected by this gate, rejected by
    another) and the hours kept against the threshold, with the current threshold marked;
    below, the share of each group's hours kept, per group column."""
    groups = gate["by_group"]
    rows = 1 + (1 if groups else 0)
    cols = max(2, len(groups))
    fig, axes = _subplots(rows, cols, figsize=(4.6 * cols, 3.0 * rows))
    bounds = _bin_bounds(np.array(gate["thresholds"]))
    hist = {k: np.array(v[:-1]) for k, v in gate["hist"].items()}  # the last bin holds the nulls
    total = hist["curated"] + hist["rejected_here"] + hist["rejected_other"]
    filled = np.flatnonzero(total > 0)
    lo_bin, hi_bin = (filled.min(), filled.max() + 1) if len(filled) else (0, len(total))
    threshold = gate["threshold"]
    if threshold is not None:  # the view always shows the current threshold
        at = int(np.searchsorted(bounds, threshold))
        lo_bin, hi_bin = min(lo_bin, max(at - 1, 0)), max(hi_bin, min(at + 1, len(total)))
    view = (bounds[lo_bin], bounds[hi_bin])
    ax = axes[0, 0]
    for values, color, label in ((total, DROPPED_ELSEWHERE, "rejected by another gate"),
                                 (hist["curated"] + hist["rejected_here"], DROPPED_HERE, "rejected by this gate"),
                                 (hist["curated"], KEPT, "curated")):
        ax.stairs(values[lo_bin:hi_bin], bounds[lo_bin:hi_bin + 1], fill=True, color=color, label=label)
    ax.set_title(f"{gate['column']}: hours per bin", **_LITERAL)
    ax.set_ylabel("hours")
    _literal(ax.legend(fontsize=7).get_texts())
    ax = axes[0, 1]
    thresholds = np.array(gate["thresholds"])
    inside = (thresholds >= view[0]) & (thresholds <= view[1])
    # kept(t) for ">=" holds on (edge[j-1], edge[j]]; for "<=" on [edge[j], edge[j+1])
    ax.plot(thresholds[inside], np.array(gate["kept_hours"])[inside], color="#48c",
            drawstyle="steps-pre" if gate["kept_when"] == ">=" else "steps-post")
    ax.set_title(f"hours kept with {gate['column']} {gate['kept_when']} threshold", **_LITERAL)
    ax.set_xlabel("threshold")
    ax.set_ylabel("hours kept")
    ax.set_ylim(bottom=0)
    for a in axes[0, :2]:
        if threshold is not None:
            a.axvline(threshold, color=THRESHOLD, linestyle="--", linewidth=2)
        if gate["log_scale"]:
            a.set_xscale("symlog", linthresh=1e-5)
    if threshold is not None and gate["kept_hours_now"] is not None:
        ax.plot([threshold], [gate["kept_hours_now"]], "o", color=THRESHOLD)
    for j in range(2, cols):
        axes[0, j].set_visible(False)
    for j, (column, entries) in enumerate(groups.items()):
        ax = axes[1, j]
        for e in entries:
            share = np.array(e["kept_hours"]) / e["population_hours"] if e["population_hours"] else np.zeros(len(thresholds))
            ax.plot(thresholds[inside], share[inside], label=str(e["group"]),
                    drawstyle="steps-pre" if gate["kept_when"] == ">=" else "steps-post")
        if threshold is not None:
            ax.axvline(threshold, color=THRESHOLD, linestyle="--", linewidth=2)
        if gate["log_scale"]:
            ax.set_xscale("symlog", linthresh=1e-5)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"share of hours kept, by {column}", **_LITERAL)
        _literal(ax.legend(fontsize=7).get_texts())
    for j in range(len(groups), cols if groups else 0):
        axes[1, j].set_visible(False)
    return fig
