"""An output's run state: what a run records beside its rows, and what the rows say is done.

An output folder holds rows (`curated/`, `rejected/`, `errors/`, written by `sinks`) and the
record of the run that wrote them, all of it read and written here:

* identity, `_state/run.json`: the configuration's fingerprint, engines and input the output
  is bound to (`RunState.claim`); another configuration or input is refused;
* configuration, `_state/config.yaml`: the run's settings in full, which the commands that
  work on the output afterwards open it with (`run_output.RunOutput`);
* attempts, `_state/attempts/<id>.json`: one record per start of a run, with its scope,
  timings and how it ended;
* `_SUCCESS`: present only while the output is complete and its accounting exact;
* progress: how many rows of each input partition (a Parquet row group) the shards hold, from
  their footers (`read_progress`), and which ids they hold (`written_ids`), for sources that
  have no partitions.

Who writes the output now (`_state/lease.json`) is `lease`'s; this module only names the file.
It imports no other module of the package: sinks, sources, resume and the commands sit above it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# ---- the output's layout ----------------------------------------------------------------------
CURATED, REJECTED, ERRORS = SPLITS = ("curated", "rejected", "errors")
STATE_DIR = "_state"
EXPORTS_DIR = "exports"  # run-time exports (`output.formats`), one folder per format
SUCCESS = "_SUCCESS"
RUN = f"{STATE_DIR}/run.json"
CONFIG = f"{STATE_DIR}/config.yaml"  # the run's whole configuration, as YAML
IDS_CHECKED = f"{STATE_DIR}/ids_checked.json"  # the input's ids were found unique (sources/ids.py)
ATTEMPTS = f"{STATE_DIR}/attempts"
LEASE_NAME = "lease.json"
LEASE = f"{STATE_DIR}/{LEASE_NAME}"  # who writes this output now (lease.py)
REPORTS = ("report.json", "report.html")
FOOTER_KEY = b"audiocurate.parts"  # a shard's rows per input partition, in its Parquet footer
TMP_PREFIX = ".tmp-"  # a file being written (`OutputDir.writing`), never read as a result


class OutputFiles(Protocol):
    """The files of an output folder, as `sinks.OutputDir` reads and writes them (named here so
    this module stays below the sinks)."""

    uri: str
    fs: pafs.FileSystem
    root: str

    def path(self, *parts: str) -> str: ...
    def part_files(self, split: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def read_bytes(self, path: str) -> Optional[bytes]: ...
    def write_bytes(self, path: str, data: bytes) -> None: ...
    def read_json(self, name: str) -> Optional[Any]: ...
    def write_json(self, name: str, obj: Any) -> None: ...


class OutputExistsError(RuntimeError):
    """OUTPUT holds the result of another configuration or input."""


class RunState:
    """The run record of one output folder (`sinks.OutputDir`, which reads and writes its files)."""

    def __init__(self, out: OutputFiles):
        self.out = out

    # ---- identity ---------------------------------------------------------------------------
    def identity(self) -> Optional[dict[str, Any]]:
        return self.out.read_json(RUN)

    def claim(self, identity: dict[str, Any], *, restart: bool) -> bool:
        """Bind the output to a configuration and input; True when resuming a run of them.

        A different configuration or input is refused; `restart` deletes what we wrote and
        starts over. A non-empty folder we did not write is never touched."""
        if self.has_content() and self._has_foreign_files():
            raise OutputExistsError(
                f"{self.out.uri} holds files audiocurate did not write; choose an empty or new folder"
            )
        existing = self.identity()
        if restart:
            self.clear()
        elif existing is not None:
            diffs = differences(existing, identity)
            if diffs:
                raise OutputExistsError(
                    f"{self.out.uri} holds the result of a different run ({'; '.join(diffs[:6])}). "
                    "Use another OUTPUT, or pass --restart to delete it and start over."
                )
            return True
        elif self.has_content():
            raise OutputExistsError(
                f"{self.out.uri} holds output with no run state; pass --restart to clear it"
            )
        self.out.write_json(RUN, identity)
        return False

    def record_config(self, yaml_text: str) -> None:
        self.out.write_bytes(self.out.path(CONFIG), yaml_text.encode())

    def recorded_config(self) -> Optional[str]:
        """The run's configuration as it recorded it (YAML), or None (an older output)."""
        raw = self.out.read_bytes(self.out.path(CONFIG))
        return raw.decode() if raw is not None else None

    def ids_checked(self) -> bool:
        """The input's ids were checked unique once for this output: the check is not repeated."""
        return bool(self.out.read_json(IDS_CHECKED))

    def mark_ids_checked(self, input_uri: str) -> None:
        self.out.write_json(IDS_CHECKED, {"unique": True, "input": input_uri})

    def has_content(self) -> bool:
        """Anything in the folder but the lease of the process that is about to write it."""
        fs = self.out.fs
        if fs.get_file_info(self.out.root).type != pafs.FileType.Directory:
            return False
        for i in fs.get_file_info(pafs.FileSelector(self.out.root, recursive=False)):
            if i.base_name != STATE_DIR:
                return True
            inside = fs.get_file_info(pafs.FileSelector(i.path, recursive=False))
            if any(j.base_name != LEASE_NAME for j in inside):
                return True
        return False

    def _has_foreign_files(self) -> bool:
        ours = {*SPLITS, STATE_DIR, SUCCESS, *REPORTS, EXPORTS_DIR}
        infos = self.out.fs.get_file_info(pafs.FileSelector(self.out.root))
        return any(i.base_name not in ours for i in infos)

    def clear(self) -> None:
        """Delete everything this tool writes in the folder (for `--restart`), but the lease
        this process holds."""
        fs, path = self.out.fs, self.out.path
        for sub in (*SPLITS, EXPORTS_DIR):
            if fs.get_file_info(path(sub)).type == pafs.FileType.Directory:
                fs.delete_dir(path(sub))
        for i in fs.get_file_info(pafs.FileSelector(path(STATE_DIR), allow_not_found=True)):
            if i.base_name == LEASE_NAME:
                continue
            if i.type == pafs.FileType.Directory:
                fs.delete_dir(i.path)
            else:
                fs.delete_file(i.path)
        for name in (SUCCESS, *REPORTS):
            if fs.get_file_info(path(name)).type == pafs.FileType.File:
                fs.delete_file(path(name))

    # ---- attempts ---------------------------------------------------------------------------
    def record_attempt(self, attempt: dict[str, Any]) -> None:
        self.out.write_json(f"{ATTEMPTS}/{attempt['id']}.json", attempt)

    def attempts(self) -> list[dict[str, Any]]:
        """Every attempt recorded, oldest first."""
        infos = self.out.fs.get_file_info(pafs.FileSelector(self.out.path(ATTEMPTS), allow_not_found=True))
        found = []
        for i in infos:
            if i.type == pafs.FileType.File and i.base_name.endswith(".json") and not i.base_name.startswith(TMP_PREFIX):
                raw = self.out.read_bytes(i.path)
                if raw:
                    found.append(json.loads(raw))
        return sorted(found, key=lambda a: a.get("started", 0))

    # ---- _SUCCESS ---------------------------------------------------------------------------
    def is_complete(self) -> bool:
        return self.out.exists(self.out.path(SUCCESS))

    def mark_complete(self, summary: dict[str, Any]) -> None:
        self.out.write_json(SUCCESS, summary)

    def unmark_complete(self) -> None:
        if self.is_complete():
            self.out.fs.delete_file(self.out.path(SUCCESS))

    # ---- progress ---------------------------------------------------------------------------
    def progress(self, splits: tuple[str, ...] = SPLITS) -> "Progress":
        return read_progress(self.out, splits)

    def segment_progress(self, id_column: str, segmented: bool) -> tuple[list[str], list[str]]:
        """(input ids whose output rows are all written, row ids written of the others), read
        from every shard's ids: the resume of sources without partitions."""
        return written_ids(self.out, [p for split in SPLITS for p in self.out.part_files(split)], id_column, segmented)


@dataclass
class Progress:
    """What the output's footers say: rows written per partition, and which shards hold each."""

    written: dict[str, float] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    unpartitioned_shards: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # rows in each shard, by path


def read_progress(out: OutputFiles, splits: tuple[str, ...] = SPLITS) -> Progress:
    """The footers of every shard in `splits`: the driver's cost grows with shards and
    partitions, never with rows."""

    def footer(path: str) -> tuple[dict[bytes, bytes], int]:
        with out.fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            return pf.schema_arrow.metadata or {}, pf.metadata.num_rows

    progress = Progress()
    written: dict[str, float] = defaultdict(float)
    paths = [p for split in splits for p in out.part_files(split)]
    # Footers are independent small reads: on object storage, their latency is what costs.
    with ThreadPoolExecutor(max_workers=32) as pool:
        footers = list(pool.map(footer, paths))
    for path, (meta, rows) in zip(paths, footers):
        progress.rows[path] = rows
        if FOOTER_KEY not in meta:
            progress.unpartitioned_shards.append(path)
            continue
        for key, n in json.loads(meta[FOOTER_KEY]).items():
            written[key] += n
            progress.shards.setdefault(key, []).append(path)
    progress.written = dict(written)
    return progress


def written_ids(out: OutputFiles, shards: list[str], id_column: str, segmented: bool) -> tuple[list[str], list[str]]:
    """(ids of input rows whose output rows are all in `shards`, segment ids of the others).
    Unsegmented, a row is its own input row; segmented, rows name their recording (`parent_id`)
    and how many segments it was cut into (`segments`), in every output, errors included."""
    seen: dict[str, list[str]] = {}
    expected: dict[str, int] = {}
    for path in shards:
        with out.fs.open_input_file(path) as f:
            names = pq.ParquetFile(f).schema_arrow.names
            segment_rows = segmented and "parent_id" in names
            t = pq.read_table(f, columns=[id_column, *(("parent_id", "segments") if segment_rows else ())])
        ids = pc.cast(t[id_column], pa.string()).to_pylist()
        parents = pc.cast(t["parent_id"], pa.string()).to_pylist() if segment_rows else ids
        totals = t["segments"].to_pylist() if segment_rows else [1] * len(ids)
        for i, p, n in zip(ids, parents, totals):
            p = p if p is not None else i  # a recording that failed before it was cut is its own row
            seen.setdefault(p, []).append(i)
            expected[p] = max(expected.get(p, 1), n or 1)
    done = [p for p, ids in seen.items() if len(ids) >= expected[p]]
    partial = [i for p, ids in seen.items() if len(ids) < expected[p] for i in ids]
    return done, partial


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two recorded identities, one line per setting (`created` aside)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key in ("created",):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} before, {b!r} now")
    return out
