"""WebDataset: tar shards of `{key}.flac` + `{key}.json` samples, written with webdataset's
own `TarWriter`. Read with `webdataset.WebDataset(sorted(glob("DEST/shard-*.tar")))`.
The key is `member_name(id)`; the json holds every column, the real id included."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa

from . import EXPORT_FORMATS, Exporter, Part, audio_of, metadata_of
from .member_names import member_name


@EXPORT_FORMATS.register("webdataset")
class WebDatasetExport(Exporter):
    name = "webdataset"

    def outputs(self, part: Part) -> list[str]:
        return [f"shard-{part.name}-{k:04d}.tar" for k in range(self.tar_count(part))]

    def write_part(self, part: Part, table: pa.Table) -> None:
        import webdataset as wds

        rows = table.to_pylist()
        size = self.options.shard_size
        names = self.outputs(part)
        for k, name in enumerate(names):
            buf = io.BytesIO()
            with wds.TarWriter(buf) as sink:
                for row in rows[k * size:(k + 1) * size]:
                    data, ext = audio_of(row.get("audio"))
                    sink.write({"__key__": member_name(self.clip_id(row)), ext: data, "json": metadata_of(row)})
            self.dest.write_bytes(self.dest.path(name), buf.getvalue())

    def finish(self, parts: list[Part]) -> dict[str, Any]:
        shards = [name for p in parts for name in self.outputs(p)]
        self.dest.write_bytes(self.dest.path("shards.txt"), "".join(f"{s}\n" for s in shards).encode())
        return {"tar_shards": len(shards)}
