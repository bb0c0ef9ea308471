"""Exports: the curated clips in the formats training stacks read (NeMo, WebDataset, lhotse
Shar, Hugging Face `datasets`).

An export (`exports.run.export`) reads an output's Parquet shards (`curated/`, or `rejected/`
with the audio read back from the input) one Ray task per shard, and writes that shard's files
in the format. Each shard's files have names derived from the shard's own name, and the file
that says a shard is done is written last, atomically: a rerun skips finished shards and
rewrites the rest, so an export holds every clip exactly once however often it is interrupted.
`finish` then writes what covers all shards (NeMo's manifest, the list of tar shards).

A format is one module: a subclass of `Exporter` registered with `@EXPORT_FORMATS.register("name")`;
`output.formats` and `audiocurate export FORMAT` take every registered name. This package holds
the registry and the base classes only, and imports nothing that imports `config`, which
validates `output.formats` against `EXPORT_FORMATS`; running an export is `exports.run`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import numpy as np
import pyarrow as pa

from .. import contract as C
from ..core.registry import Registry
from .member_names import file_extension

if TYPE_CHECKING:
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
