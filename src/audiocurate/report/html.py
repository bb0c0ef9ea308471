"""report.html: one self-contained page (plots as PNG data URIs, clips as Opus data URIs),
rendered from `templates/report.html.j2` with every value escaped."""

from __future__ import annotations

import functools
from typing import Any, Optional

from .figures import draw_gate, figures, png_base64
from .whatif import margin_key


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


@functools.lru_cache(maxsize=1)
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("audiocurate.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    env.filters["fmt"] = fmt
    return env.get_template("report.html.j2")


def render_html(report: dict[str, Any], listen: Optional[dict[str, list[dict[str, Any]]]] = None) -> str:
    listen = listen or {}
    a = report["accounting"]
    summary = [
        ("Input rows", a["input"]), ("Curated", a["curated"]), ("Rejected", a["rejected"]),
        ("Errors", a["errors"]), ("Duplicates", a["duplicates"]),
        ("Accounting", "OK" if a["ok"] else "MISMATCH"),
        ("Audio (h)", f"{report['audio_hours']['total']:.3f}"),
        ("Wall time (s)", f"{report['timing']['wall_s']:.1f}"),
        ("Audio-hours per hour", fmt(report["throughput"]["audio_hours_per_hour"])),
    ]
    return _template().render(
        report=report, summary=summary, stages=report.get("stages") or {}, recordings=report.get("recordings"),
        languages=report.get("languages"), figures=figures(report), gates=_gates(report.get("whatif") or [], listen),
        samples=_samples(report.get("samples") or {}, listen),
        listen_error=(listen.get("_error") or [{}])[0].get("error"))


def _gates(gates: list[dict[str, Any]], listen: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each gate with its figure and its margin rows (kept side, then dropped side), each with
    its player where the clip decodes."""
    out = []
    for g in gates:
        rows = []
        for side in ("kept", "dropped"):
            players = listen.get(margin_key(g["column"], side), [])
            for i, row in enumerate(g["margin"][side]):
                rows.append((side, row, _player(players, i)))
        columns = list(dict.fromkeys(c for _, row, _ in rows for c in row))
        out.append({**g, "png": png_base64(draw_gate(g)), "margin_rows": rows, "margin_columns": columns})
    return out


def _samples(samples: dict[str, list[dict[str, Any]]], listen: dict[str, list[dict[str, Any]]]) -> list[tuple]:
    """Per outcome (curated, each drop reason, each error stage): its columns and its sample
    rows, the first ones with a player."""
    out = []
    for outcome, rows in samples.items():
        if not rows:
            continue
        players = listen.get(outcome, [])
        out.append((outcome, [c for c in rows[0] if c != "audio"],
                    [(r, _player(players, i)) for i, r in enumerate(rows)]))
    return out


def _player(players: list[dict[str, Any]], i: int) -> dict[str, Optional[str]]:
    """The i-th row's clip: its data URI, or a note on why it has none (too large to preview)."""
    p = players[i] if i < len(players) else {}
    return {"uri": p.get("audio"), "note": p.get("audio_note")}
