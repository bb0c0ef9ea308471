"""Hugging Face `datasets`: Parquet files in `DEST/data/` whose schema metadata declares the
features (`audio` as an `Audio` feature: `hf_features`) and a dataset card (`README.md`)
naming them, so `datasets.load_dataset(DEST, split="train")` returns an audio dataset, and
`push_to_hub` publishes it. Decoding `Audio` in datasets >= 4 needs `torchcodec`; without it,
`cast_column("audio", Audio(decode=False))` gives the bytes."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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
        self.dest.write_bytes(self.dest.path("README.md"), card.encode())
        return {"data_files": "data/*.parquet"}
