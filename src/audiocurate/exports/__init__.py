"""Exports: the curated clips in the formats training stacks read (NeMo, WebDataset, lhotse
Shar, Hugging Face `datasets`).

An export reads an output's Parquet shards (`curated/`, or `rejected/` with the audio read
back from the input) one Ray task per shard, and writes that shard's files in the format.
Each shard's files have names derived from the shard's own name, and the file that says a
shard is done is written last, atomically: a rerun skips finished shards and rewrites the
rest, so an export holds every clip exactly once however often it is interrupted. `finish`
then writes what covers all shards (NeMo's manifest, the list of tar shards).

A format is one module: a subclass of `Exporter` registered with `@EXPORT_FORMATS.register("name")`;
`output.formats` and `audiocurate export FORMAT` take every registered name. This module imports
nothing that imports `config`, which validates `output.formats` against `EXPORT_FORMATS`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import contract as C
from ..core.registry import Registry
from .member_names import file_extension

if TYPE_CHECKING:
    from ..config import RayConfig, StorageConfig
    from ..sinks import OutputDir

EXPORT_FORMATS: Registry[Any] = Registry("export format", lazy={
    "nemo": "audiocurate.exports.nemo", "webdataset": "audiocurate.exports.webdataset",
    "lhotse": "audiocurate.exports.lhotse", "hf": "audiocurate.exports.hf",
})

# Columns that are transport or already in the audio file: never copied into metadata.
_NOT_METADATA = {C.AUDIO, C.PCM, C.ERROR_STAGE, C.ERROR}


@dataclass(frozen=True)
class ExportOptions:
    shard_size: int = 1000  # clips per tar (webdataset; nemo with tarred)
    tarred: bool = False  # nemo: NeMo's tarred layout instead of loose files


@dataclass(frozen=True)
class Part:
    """One Parquet shard of the output, the unit of export work."""

    name: str  # the shard's stem, e.g. part-1a2b3c
    path: str
    rows: int


class Exporter:
    """Base of an export format. `outputs(part)` lists the files a shard becomes, the last
    one written last (it marks the shard done); `write_part` writes them; `finish` writes
    what covers all shards and returns facts for the summary."""

    name: ClassVar[str] = ""
    summary_file: ClassVar[Optional[str]] = "export.json"  # None where the format's reader lists the folder

    def __init__(self, dest: "OutputDir", options: ExportOptions, id_column: str = "id"):
        self.dest = dest
        self.options = options
        self.id_column = id_column  # the run's `source.id_column`: rows carry their id there
        self.run: Optional["OutputDir"] = None  # the output exported: its report.json and recorded config

    def clip_id(self, row: dict[str, Any]) -> str:
        """A row's id as the run read it (str of the id column's value)."""
        return str(row[self.id_column])

    def outputs(self, part: Part) -> list[str]:
        raise NotImplementedError

    def write_part(self, part: Part, table: pa.Table) -> None:
        raise NotImplementedError

    def finish(self, parts: list[Part]) -> dict[str, Any]:
        return {}

    def done(self, part: Part) -> bool:
        last = self.outputs(part)[-1]
        return self.dest.exists(self.dest.path(last))

    def tar_count(self, part: Part) -> int:
        return max(1, math.ceil(part.rows / self.options.shard_size))


def audio_of(cell: Optional[dict[str, Any]]) -> tuple[bytes, str]:
    """The encoded audio of a row and its file extension (`flac` for the 16 kHz clips; the
    extension of the audio's `path` where it is a plain one)."""
    if not cell or not cell.get("bytes"):
        raise ValueError("row has no audio")
    return cell["bytes"], file_extension(cell.get("path") or "")


def run_id_column(out: "OutputDir") -> str:
    """The id column of the run that wrote `out` (`source.id_column`, as recorded in
    `_state/config.yaml`; the run's identity where that is missing; else `id`)."""
    import yaml

    raw = out.state.recorded_config()
    recorded = yaml.safe_load(raw) if raw else None
    source = (recorded or {}).get("source") or ((out.state.identity() or {}).get("config") or {}).get("source") or {}
    return str(source.get("id_column") or "id")


def metadata_of(row: dict[str, Any]) -> dict[str, Any]:
    """A row's columns as JSON-ready values (the audio excluded)."""
    out = {}
    for k, v in row.items():
        if k in _NOT_METADATA:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        elif isinstance(v, (bytes, bytearray)):
            continue
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


class _ExportParts:
    """The Ray task: each input row names one shard; it is exported and a summary returned."""

    def __init__(self, exporter: Exporter, source: "OutputDir", audio_from: Optional[Callable[[pa.Table], pa.Table]]):
        self.exporter = exporter
        self.source = source
        self.audio_from = audio_from

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = []
        for name, path, rows in zip(*(batch[c].to_pylist() for c in ("name", "path", "rows"))):
            part = Part(name, path, rows)
            with self.source.fs.open_input_file(path) as f:
                table = pq.read_table(f)
            if self.audio_from is not None:
                table = self.audio_from(table)
            t0 = time.perf_counter()
            self.exporter.write_part(part, table)
            done.append({"name": name, "rows": table.num_rows, "seconds": time.perf_counter() - t0})
        return pa.Table.from_pylist(done, schema=pa.schema([("name", pa.string()), ("rows", pa.int64()),
                                                            ("seconds", pa.float64())]))


def export(output_uri: str, fmt: str, dest_uri: str, *, split: str = "curated",
           options: Optional[ExportOptions] = None, storage: Optional["StorageConfig"] = None,
           input_uri: Optional[str] = None, echo: Callable[[str], None] = print,
           ray_config: Optional["RayConfig"] = None) -> dict[str, Any]:
    """Export `split` of the output at `output_uri` to `dest_uri` in format `fmt`; resumable.

    `rejected/` keeps no audio: with `split="rejected"` the clips are read back from the run's
    input (`input_uri`, default: the input the output records) and encoded as 16 kHz FLAC."""
    import ray

    from ..config import RayConfig
    from ..runtime import configure_dataset, init_ray
    from ..sinks import REJECTED, OutputDir

    t0 = time.time()
    out = OutputDir(output_uri, storage)
    dest = OutputDir(dest_uri, storage)
    exporter = EXPORT_FORMATS.get(fmt)(dest, options or ExportOptions(), id_column=run_id_column(out))
    exporter.run = out
    parts = []
    for path in out.part_files(split):
        with out.fs.open_input_file(path) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        parts.append(Part(path.rsplit("/", 1)[-1].rsplit(".", 1)[0], path, rows))
    todo = [p for p in parts if not exporter.done(p)]
    audio_from = None
    if split == REJECTED:
        from ..sources.audio_by_id import SourceAudio

        identity = out.state.identity() or {}
        audio_from = SourceAudio(input_uri or identity.get("input"), storage, identity.get("config", {}))
    echo(f"audiocurate: export {fmt} of {split}/ ({sum(p.rows for p in parts)} clips in {len(parts)} shards, "
         f"{len(parts) - len(todo)} already exported) to {dest_uri}")
    seconds = 0.0
    if todo:
        init_ray(RayConfig(progress=False))
        items = ray.data.from_items([{"name": p.name, "path": p.path, "rows": p.rows} for p in todo],
                                    override_num_blocks=len(todo))
        items = configure_dataset(items, RayConfig())
        results = items.map_batches(_ExportParts(exporter, out, audio_from), batch_size=1, batch_format="pyarrow",
                                    num_cpus=(ray_config or RayConfig()).export_task_cpus).take_all()
        seconds = float(sum(r["seconds"] for r in results))
    facts = exporter.finish(parts)
    wall = time.time() - t0
    clips = sum(p.rows for p in parts)
    summary = {"format": fmt, "split": split, "dest": dest_uri, "clips": clips, "shards": len(parts),
               "exported_now": len(todo), "wall_s": wall, "busy_s": seconds, **facts}
    if exporter.summary_file:
        dest.write_json(exporter.summary_file, summary)
    return summary
