"""What a run produced: `report.json`, a self-contained `report.html` with plots, a summary.

The report is computed from the output files, not from counters of one attempt, so it
describes the whole result across resumed attempts. It streams over the shards one row group
at a time and keeps fixed-size histograms, so its memory does not grow with the number of
clips (see `tally`).

- `tally`: the accounting from the stored rows (counts, hours, stages, samples, languages);
- `whatif`: per numeric gate, the hours kept against its threshold, per group, and the rows
  at its margin;
- `assemble`: one pass over an output into `report.json` and `report.html`;
- `text`: the terminal summary; `html` and `templates/`: the page; `figures`: its plots.
"""

from .assemble import build_report, write_report
from .html import render_html
from .text import format_summary

__all__ = ["build_report", "format_summary", "render_html", "write_report"]
