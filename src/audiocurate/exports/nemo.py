"""NeMo: a JSON-lines manifest (`audio_filepath`, `duration`, `text`, our columns as extra
keys) with the audio beside it, or NeMo's tarred layout (`audio_K.tar` shards and
`tarred_audio_manifest.json`, whose `audio_filepath` is the member name and `shard_id` the
tar's index in `tarred_audio_filepaths.txt`).

The field names and their meaning are those NeMo's `ASRAudioText` collection parses
(`nemo.collections.common.parts.preprocessing.collections`: `audio_filepath`, `duration`,
`text`, optional `offset`, `lang`); relative paths resolve against the manifest's folder.
Audio files are named `member_name(id)`; each entry keeps the real id under the run's id column."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pyarrow as pa

from . import EXPORT_FORMATS, Exporter, Part, audio_of, metadata_of
from .member_names import member_name


@EXPORT_FORMATS.register("nemo")
class NemoExport(Exporter):
    name = "nemo"

    def outputs(self, part: Part) -> list[str]:
        tars = [f"tars/audio-{part.name}-{k:04d}.tar" for k in range(self.tar_count(part))] if self.options.tarred else []
        return [*tars, f"manifests/{part.name}.jsonl"]

    def write_part(self, part: Part, table: pa.Table) -> None:
        lines = []
        rows = table.to_pylist()
        tars = self.outputs(part)[:-1]
        members: list[list[tuple[str, bytes]]] = [[] for _ in tars]
        for j, row in enumerate(rows):
            data, ext = audio_of(row.get("audio"))
            key = member_name(self.clip_id(row))
            entry = {"audio_filepath": f"audio/{key}.{ext}", "duration": row.get("duration_s"),
                     "text": row.get("transcript") or ""}
            if row.get("language"):
                entry["lang"] = row["language"]
            if self.options.tarred:
                k = j // self.options.shard_size
                entry["audio_filepath"] = f"{key}.{ext}"
                entry["_tar"] = tars[k]
                members[k].append((entry["audio_filepath"], data))
            else:
                self.dest.write_bytes(self.dest.path(entry["audio_filepath"]), data)
            entry.update({k: v for k, v in metadata_of(row).items() if k not in entry and k != "duration_s"})
            lines.append(json.dumps(entry, ensure_ascii=False))
        for name, files in zip(tars, members):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for member, data in files:
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            self.dest.write_bytes(self.dest.path(name), buf.getvalue())
        self.dest.write_bytes(self.dest.path(self.outputs(part)[-1]), ("\n".join(lines) + "\n").encode())

    def finish(self, parts: list[Part]) -> dict[str, Any]:
        entries = []
        for p in parts:
            raw = self.dest.read_bytes(self.dest.path(f"manifests/{p.name}.jsonl")) or b""
            entries.extend(json.loads(line) for line in raw.decode().splitlines() if line.strip())
        if not self.options.tarred:
            self.dest.write_bytes(self.dest.path("manifest.jsonl"),
                                  "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode())
            return {"manifest": "manifest.jsonl"}
        tars = [t for p in parts for t in self.outputs(p)[:-1]]
        index = {t: i for i, t in enumerate(tars)}
        for e in entries:
            e["shard_id"] = index[e.pop("_tar")]
        self.dest.write_bytes(self.dest.path("tarred_audio_manifest.json"),
                              "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode())
        self.dest.write_bytes(self.dest.path("tarred_audio_filepaths.txt"), "".join(f"{t}\n" for t in tars).encode())
        return {"manifest": "tarred_audio_manifest.json", "tar_shards": len(tars)}
