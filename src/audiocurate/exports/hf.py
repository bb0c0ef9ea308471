"""Hugging Face `datasets`: Parquet files in `DEST/data/` whose schema metadata declares the
features (`audio` as an `Audio` feature) and a dataset card (`README.md`) naming them, so
`datasets.load_dataset(DEST, split="train")` returns an audio dataset, and `push_to_hub`
publishes it. Decoding `Audio` in
datasets >= 4 needs `torchcodec`; without it, `cast_column("audio", Audio(decode=False))`
gives the bytes."""

from __future__ import annotations

import io
import json
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from .. import contract as C
from . import EXPORT_FORMATS, Exporter, Part


def _feature(t: pa.DataType) -> Optional[dict[str, Any]]:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _feature(t.value_type)
        return {"feature": inner, "_type": "Sequence"} if inner else None
    if pa.types.is_struct(t):
        fields = {f.name: _feature(f.type) for f in t}
        return None if any(v is None for v in fields.values()) else fields
    names = {pa.string(): "string", pa.large_string(): "large_string", pa.bool_(): "bool", pa.int8(): "int8",
             pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64", pa.float32(): "float32",
             pa.float64(): "float64", pa.binary(): "binary"}
    return {"dtype": names[t], "_type": "Value"} if t in names else None


@EXPORT_FORMATS.register("hf")
class HuggingFaceExport(Exporter):
    name = "hf"
    summary_file = None  # `load_dataset("parquet", data_dir=DEST)` would take it for data

    def outputs(self, part: Part) -> list[str]:
        return [f"data/{part.name}.parquet"]

    def write_part(self, part: Part, table: pa.Table) -> None:
        keep = [c for c in table.column_names if c not in (C.ERROR_STAGE, C.ERROR, C.PCM)]
        table = table.select(keep)
        features: dict[str, Any] = {}
        for field in table.schema:
            if field.name == C.AUDIO:
                features[field.name] = {"_type": "Audio"}
            elif (f := _feature(field.type)) is not None:
                features[field.name] = f
            else:
                table = table.drop_columns([field.name])
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
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
