"""Hugging Face `datasets`: Parquet files in `DEST/data/` whose schema metadata declares the
features (`audio` as an `Audio` feature: `hf_features`) and a dataset card (`README.md`)
naming them, so `datasets.load_dataset(DEST, split="train")` returns an audio dataset, and
`push_to_hub` publishes it. Decoding `Audio` in datasets >= 4 needs `torchcodec`; without it,
`cast_column("audio", Audio(decode=False))` gives the bytes."""

from __future__ import annotations

import io
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .. import contract as C
from . import EXPORT_FORMATS, Exporter, Part
from .hf_features import hf_feature_metadata


@EXPORT_FORMATS.register("hf")
class HuggingFaceExport(Exporter):
    name = "hf"
    summary_file = None  # `load_dataset("parquet", data_dir=DEST)` would take it for data

    def outputs(self, part: Part) -> list[str]:
        return [f"data/{part.name}.parquet"]

    def write_part(self, part: Part, table: pa.Table) -> None:
        keep = [c for c in table.column_names if c not in (C.ERROR_STAGE, C.ERROR, C.PCM)]
        table = table.select(keep)
        # No sampling rate: decoded at the file's own (16 kHz, unless output.audio_format: original).
        table = table.replace_schema_metadata(hf_feature_metadata(table.schema, sampling_rate=None))
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.dest.write_bytes(self.dest.path(self.outputs(part)[0]), buf.getvalue())

    def finish(self, parts: list[Part]) -> dict[str, Any]:
        clips = sum(p.rows for p in parts)
        card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.parquet\n---\n\n"
                f"# Curated speech\n\n{clips} clips curated by audiocurate: 16 kHz audio, Whisper transcripts, "
                "educational-value scores (`edu_score` 1-5) and quality columns.\n")
        if self.run is not None:
            card += curation_card(self.run.read_json("report.json"), (self.run.state.identity() or {}).get("config"))
        self.dest.write_bytes(self.dest.path("README.md"), card.encode())
        return {"data_files": "data/*.parquet"}


def curation_card(report: Optional[dict[str, Any]], config: Optional[dict[str, Any]]) -> str:
    """The card's account of the curation: every gate that removed clips or has a threshold,
    with its setting, threshold, clips and hours removed, then the gates' settings as run."""
    if not report:
        return ""
    hours = report.get("audio_hours", {})
    lines = ["", "## How it was curated", "",
             f"{report['accounting']['input']} input rows: {report['accounting'].get('curated', '?')} curated "
             f"({hours.get('curated', 0):.2f} h), {sum(report.get('drop_reasons', {}).values())} rejected "
             f"({hours.get('rejected', 0):.2f} h), {sum(report.get('error_stages', {}).values())} failed.", "",
             "| gate (drop reason) | setting | threshold | clips removed | hours removed |", "|---|---|---|---:|---:|"]
    gates = {g["drop_reason"]: g for g in report.get("whatif", []) if g.get("drop_reason")}
    reasons = list(report.get("drop_reasons", {}))
    reasons += [r for r, g in gates.items() if g.get("threshold") is not None and r not in reasons]
    for reason in reasons:
        g = gates.get(reason, {})
        threshold = g.get("threshold")
        shown = "" if threshold is None else f"{g.get('kept_when', '')} {threshold:g}".strip()
        lines.append(f"| `{reason}` | {('`' + g['setting'] + '`') if g.get('setting') else 'see below'} | {shown} | "
                     f"{report['drop_reasons'].get(reason, 0)} | {report.get('drop_reason_hours', {}).get(reason, 0.0):.3f} |")
    if config:
        gated = {"filters": {k: v for k, v in config.get("filters", {}).items()
                             if not (isinstance(v, dict) and v.get("enabled") is False)},
                 **{k: config[k] for k in ("select", "dedup", "corpus") if k in config}}
        lines += ["", "Gate settings as run (`audiocurate config` documents each field):", "", "```yaml",
                  yaml.safe_dump(gated, sort_keys=False).rstrip(), "```"]
    return "\n".join(lines) + "\n"
