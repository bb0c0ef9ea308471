"""`audiocurate compact`: few large files, the same rows, resume and report unchanged, crash-safe."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from audiocurate.compaction import JOURNAL, compact, recover
from audiocurate.config import PipelineConfig, SourceConfig
from audiocurate.pipeline import run
from audiocurate.resume import plan_reads
from audiocurate.run_state import SPLITS
from audiocurate.sinks import OutputDir
from audiocurate.sources import open_source


def _rows(out, split):
    p = out / split
    return sorted(pq.read_table(p).to_pylist(), key=lambda r: r["id"]) if p.exists() else []


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory, ray_local, demo_parquet):
    """The demo with shards of 2 rows, and no judge: many small files, quickly."""
    out = tmp_path_factory.mktemp("compact") / "out"
    config = PipelineConfig.load(overrides={"ray.progress": False, "output.rows_per_shard": 2, "output.compact_mb": None,
                                            "judge.backend": "none", "decode.read_block_mb": 0.05,
                                            # no model is under test: transcripts from the input's column
                                            "asr.backend": "none", "asr.text_column": "sentence"})
    report = run(config, demo_parquet, str(out), echo=lambda s: None)
    return config, out, report


def test_compaction_keeps_every_row_and_what_resume_knows(small_shards, demo_parquet, tmp_path):
    import shutil

    config, built, report = small_shards
    out = tmp_path / "out"
    shutil.copytree(built, out)
    before = {s: _rows(out, s) for s in SPLITS}
    files_before = {s: len(list((out / s).glob("*.parquet"))) for s in SPLITS}
    assert files_before["curated"] >= 4, "the fixture must leave several small shards"

    result = compact(OutputDir(str(out)), target_mb=64)
    assert result.files_after == {s: min(files_before[s], 1) for s in SPLITS}
    assert {s: _rows(out, s) for s in SPLITS} == before
    merged = next((out / "curated").glob("*.parquet"))
    assert pq.ParquetFile(merged).metadata.num_rows == len(before["curated"])
    # the footers' row-group counts were summed: the plan finds everything finished
    plan = plan_reads(open_source(demo_parquet, SourceConfig()), OutputDir(str(out)), SPLITS, resumed=True)
    assert plan.finished_rows == report["accounting"]["input"] and not plan.remaining
    # and a rerun of the same command has nothing to do and accounts for every row
    again = run(config, demo_parquet, str(out), echo=lambda s: None)
    assert again["accounting"]["ok"] and again["accounting"] == report["accounting"]


def test_a_compaction_killed_midway_is_finished_by_the_next(small_shards, tmp_path):
    import shutil

    _, built, _ = small_shards
    out = tmp_path / "out"
    shutil.copytree(built, out)
    before = _rows(out, "curated")
    shards = sorted(str(p) for p in (out / "curated").glob("*.parquet"))
    od = OutputDir(str(out))
    # killed after the merged file was committed, before its shards were deleted
    target = str(out / "curated" / "part-cmerged.parquet")
    merged = pq.read_table(out / "curated")
    pq.write_table(merged, target)
    (out / JOURNAL).mkdir(parents=True)
    (out / JOURNAL / "x.json").write_text(json.dumps({"target": target, "sources": shards}))
    assert recover(od) == 1
    assert [p.name for p in (out / "curated").glob("*.parquet")] == ["part-cmerged.parquet"]
    assert _rows(out, "curated") == before and not list((out / JOURNAL).glob("*.json"))
    # killed before the merged file was committed: the shards stay, the entry goes
    (out / JOURNAL / "y.json").write_text(json.dumps({"target": str(out / "curated" / "part-cnever.parquet"),
                                                      "sources": [target]}))
    assert recover(od) == 1 and _rows(out, "curated") == before
    # a journal entry half-written by a killed process is not an entry
    (out / JOURNAL / ".tmp-1234-z.json").write_text('{"tar')
    assert recover(od) == 0


def test_shards_of_an_older_version_beside_new_ones_are_not_merged(small_shards, tmp_path):
    import shutil

    _, built, _ = small_shards
    out = tmp_path / "out"
    shutil.copytree(built, out)
    old = next((out / "curated").glob("*.parquet"))
    pq.write_table(pq.read_table(old).replace_schema_metadata(None), old)
    with pytest.raises(RuntimeError, match="older audiocurate"):
        compact(OutputDir(str(out)))


def test_output_compact_mb_compacts_at_the_end_of_a_run(tmp_path, ray_local, demo_parquet):
    config = PipelineConfig.load(overrides={"ray.progress": False, "output.rows_per_shard": 2,
                                            "judge.backend": "none", "output.compact_mb": 64,
                                            "asr.backend": "none", "asr.text_column": "sentence"})
    out = tmp_path / "out"
    report = run(config, demo_parquet, str(out), echo=lambda s: None)
    assert report["accounting"]["ok"]
    assert all(len(list((out / s).glob("*.parquet"))) <= 1 for s in SPLITS)
    assert sum(len(_rows(out, s)) for s in SPLITS) == report["accounting"]["input"]


def test_a_merge_streams_row_groups_and_types_a_column_one_shard_left_null(small_shards, tmp_path, monkeypatch):
    """The merge holds one row group at a time (row groups cut at `_GROUP_BYTES`), a column all
    null in one shard (Parquet type null) takes the type the other shards give it, and each
    shard's footer is read once (on an object store, each read is a request or two)."""
    import shutil

    import pyarrow as pa

    from audiocurate import compaction

    _, built, _ = small_shards
    out = tmp_path / "out"
    shutil.copytree(built, out)
    shards = sorted((out / "curated").glob("*.parquet"))
    first = pq.read_table(shards[0])
    nulled = first.set_column(first.schema.get_field_index("transcript"), pa.field("transcript", pa.null()),
                              pa.nulls(first.num_rows))
    pq.write_table(nulled, shards[0])
    nulled_ids = set(first["id"].to_pylist())
    before = [{**r, "transcript": None} if r["id"] in nulled_ids else r for r in _rows(built, "curated")]
    monkeypatch.setattr(compaction, "_GROUP_BYTES", 1)  # every shard's row group stays its own
    footers_read, merging, real_merge = [], [], compaction._merge
    real_read, real_schema, real_file = pq.read_metadata, pq.read_schema, pq.ParquetFile

    def merge(out, split, group):
        merging.append(group)
        try:
            return real_merge(out, split, group)
        finally:
            merging.pop()

    def read_metadata(f, *a, **kw):
        footers_read.extend(merging[-1:])
        return real_read(f, *a, **kw)

    def read_schema(f, *a, **kw):
        footers_read.extend(merging[-1:])
        return real_schema(f, *a, **kw)

    def parquet_file(f, *a, metadata=None, **kw):
        if metadata is None:
            footers_read.extend(merging[-1:])
        return real_file(f, *a, metadata=metadata, **kw)

    monkeypatch.setattr(compaction, "_merge", merge)
    monkeypatch.setattr(compaction.pq, "read_metadata", read_metadata)
    monkeypatch.setattr(compaction.pq, "read_schema", read_schema)
    monkeypatch.setattr(compaction.pq, "ParquetFile", parquet_file)
    compact(OutputDir(str(out)), target_mb=64)
    monkeypatch.undo()
    merged_shards = sum(len(group) for group in {id(g): g for g in footers_read}.values())
    assert len(footers_read) == merged_shards >= len(shards)  # one footer read per shard merged
    merged = pq.ParquetFile(next((out / "curated").glob("*.parquet")))
    assert merged.schema_arrow.field("transcript").type == pa.string()
    assert merged.metadata.num_row_groups == len(shards)
    assert _rows(out, "curated") == before


def test_a_stream_that_fails_leaves_no_file(tmp_path):
    od = OutputDir(str(tmp_path / "out"))
    target = od.path("curated", "part-x.parquet")
    with pytest.raises(RuntimeError, match="disk full"):
        with od.writing(target) as f:
            f.write(b"half a file")
            raise RuntimeError("disk full")
    assert not list((tmp_path / "out" / "curated").iterdir())
    with od.writing(target) as f:
        f.write(b"whole")
    assert [p.name for p in (tmp_path / "out" / "curated").iterdir()] == ["part-x.parquet"]
