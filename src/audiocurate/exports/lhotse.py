"""lhotse Shar, written by lhotse's own `SharWriter`: per shard of the output a
`cuts.<shard>.jsonl.gz` and a `recording.<shard>.tar` (FLAC). One cut per clip, its id
`member_name(id)` (lhotse names the tar member after the cut id), one supervision with the
transcript (word alignments when the row carries `words`), our scores and source columns in
the cut's `custom`, the real id included under the run's id column name. Read with
`lhotse.CutSet.from_shar(in_dir=DEST)`. Needs `lhotse` (`pip install lhotse`, which brings torch)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pyarrow as pa

from . import EXPORT_FORMATS, Exporter, Part, audio_of, metadata_of
from .member_names import member_name


@EXPORT_FORMATS.register("lhotse")
class LhotseSharExport(Exporter):
    name = "lhotse"
    summary_file = None  # `from_shar(in_dir=...)` takes every file in the folder for a field

    def outputs(self, part: Part) -> list[str]:
        return [f"recording.{part.name}.tar", f"cuts.{part.name}.jsonl.gz"]

    def write_part(self, part: Part, table: pa.Table) -> None:
        from lhotse import MonoCut, Recording, SupervisionSegment
        from lhotse.shar import SharWriter
        from lhotse.supervision import AlignmentItem

        with tempfile.TemporaryDirectory() as tmp:
            with SharWriter(tmp, fields={"recording": "flac"}, shard_size=None, shard_suffix=f".{part.name}") as writer:
                for row in table.to_pylist():
                    cid = member_name(self.clip_id(row))
                    data, _ = audio_of(row.get("audio"))
                    rec = Recording.from_bytes(data, recording_id=cid)
                    meta = metadata_of(row)
                    words = meta.pop("words", None)
                    alignment = None
                    if words:
                        alignment = {"word": [AlignmentItem(w["word"], w["start_s"], w["end_s"] - w["start_s"],
                                                            w.get("probability")) for w in words]}
                    sup = SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=rec.duration,
                                             text=row.get("transcript") or "", language=row.get("language"),
                                             alignment=alignment)
                    custom = {k: v for k, v in meta.items() if k not in ("transcript", "language")}
                    writer.write(MonoCut(id=cid, start=0.0, duration=rec.duration, channel=0, recording=rec,
                                         supervisions=[sup], custom=custom))
            for name in self.outputs(part):  # the cuts file last: it marks the shard done
                with open(os.path.join(tmp, name), "rb") as f:
                    self.dest.write_bytes(self.dest.path(name), f.read())

    def finish(self, parts: list[Part]) -> dict[str, Any]:
        return {"shar_shards": len(parts)}
