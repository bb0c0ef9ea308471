"""The run's summary on the terminal."""

from __future__ import annotations

from typing import Any


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
    languages = report.get("languages") or []
    if len(languages) > 1:
        lines.append("  languages       " + ", ".join(
            f"{e['language']} {e['curated']} kept / {e['rejected']} rejected" for e in languages[:8])
            + (f" and {len(languages) - 8} more" if len(languages) > 8 else ""))
    return "\n".join(lines)
