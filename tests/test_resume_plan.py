"""Resume by row group (resume.py), without Ray: shard footers, the read plan, the planned reads."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiocurate import resume
from audiocurate.config import SourceConfig
from audiocurate.contract import PART
from audiocurate.resume import DropWrittenSegments, plan_reads
from audiocurate.run_state import FOOTER_KEY, SPLITS
from audiocurate.sinks import CurationSink, OutputDir
from audiocurate.sources import open_source
from audiocurate.sources.parquet import read_planned


@pytest.fixture
def source(tmp_path):
    """20 rows in 5 row groups of 4."""
    rows = [{"id": f"r{i:02d}", "audio_bytes": b"x", "sentence": f"s{i}"} for i in range(20)]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    return open_source(str(path), SourceConfig())


def _rows(source, group, ids, *, drop=None, segments=None):
    """Rows of `group` as the sink gets them: tagged with the group's key."""
    key = resume.partitions(source)[group].key
    t = pa.table({"id": ids, "sentence": ids, PART: [key] * len(ids),
                  "drop_reason": [drop] * len(ids), "error_stage": pa.nulls(len(ids), pa.string()),
                  "error": pa.nulls(len(ids), pa.string())})
    if segments is not None:
        t = t.append_column("segments", pa.array([segments] * len(ids), pa.int32()))
    return t


def _group_ids(g):
    return [f"r{i:02d}" for i in range(4 * g, 4 * g + 4)]


def test_finished_groups_are_not_read_and_cut_off_ones_drop_their_done_ids(source, tmp_path, monkeypatch):
    out = OutputDir(str(tmp_path / "out"))
    sink = CurationSink(out, "id", ["sentence"])
    sink.write_table(_rows(source, 0, _group_ids(0)[:3]))  # group 0 across two shards and outputs
    sink.write_table(_rows(source, 0, _group_ids(0)[3:], drop="silence"))
    sink.write_table(_rows(source, 1, ["r04", "r06"]))  # group 1 cut off mid-way
    # the footers hold the counts; the rows do not carry the partition column
    shard = out.part_files("curated")[0]
    assert PART not in pq.read_schema(shard).names
    assert FOOTER_KEY in pq.read_schema(shard).metadata

    read_for_ids = []
    real = resume.written_ids
    monkeypatch.setattr(resume, "written_ids", lambda o, shards, c, seg: read_for_ids.extend(shards) or real(o, shards, c, seg))
    plan = plan_reads(source, out, SPLITS, resumed=True)
    assert plan.input_rows == 20 and plan.finished_rows == 4 + 2
    assert plan.groups == {"in_scope": 5, "finished": 1, "cut_off": 1, "shards_read_for_ids": 1}
    assert len(read_for_ids) == 1 and "r04" in pq.read_table(read_for_ids[0])["id"].to_pylist()
    [item] = plan.items
    assert [g["group"] for g in item["groups"]] == [1, 2, 3, 4]
    assert sorted(item["done"]) == ["r04", "r06"]

    with pq.ParquetFile(item["path"]) as pf:
        read = pa.concat_tables(read_planned(pf, item, "id"))
    assert read["id"].to_pylist() == ["r05", "r07"] + [f"r{i:02d}" for i in range(8, 20)]
    keys = {p.group: p.key for p in resume.partitions(source)}
    assert read[PART].to_pylist() == [keys[1]] * 2 + [keys[g] for g in (2, 3, 4) for _ in range(4)]


def test_limit_is_whole_groups_and_one_groups_head(source, tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    plan = plan_reads(source, out, SPLITS, resumed=False, limit=10)
    assert plan.input_rows == 10 and plan.finished_rows == 0
    [item] = plan.items
    assert [(g["group"], g["take"]) for g in item["groups"]] == [(0, 4), (1, 4), (2, 2)]
    with pq.ParquetFile(item["path"]) as pf:
        assert pa.concat_tables(read_planned(pf, item, "id"))["id"].to_pylist() == [f"r{i:02d}" for i in range(10)]

    # the limited run finished; a whole run then reads only what the limit left out, and the
    # group it took the head of is cut off: read by id, not by count
    sink = CurationSink(out, "id", ["sentence"])
    for g, ids in ((0, _group_ids(0)), (1, _group_ids(1)), (2, ["r08", "r09"])):
        sink.write_table(_rows(source, g, ids))
    plan = plan_reads(source, out, SPLITS, resumed=True)
    assert plan.finished_rows == 10 and plan.groups["finished"] == 2
    [item] = plan.items
    assert [(g["group"], g["take"]) for g in item["groups"]] == [(2, 4), (3, 4), (4, 4)]
    assert sorted(item["done"]) == ["r08", "r09"]
    # and a smaller limit than what is done has nothing left
    assert plan_reads(source, out, SPLITS, resumed=True, limit=6).remaining is False


def test_a_recording_counts_once_over_its_segments(source, tmp_path):
    """Segment rows count 1/segments of their recording: a group is finished when every
    recording in it has all its segments written, however they were cut."""
    out = OutputDir(str(tmp_path / "out"))
    sink = CurationSink(out, "id", ["sentence"], segmented=True)
    ids = _group_ids(0)
    # three recordings of one segment each, and one of three segments, two of them written
    t = _rows(source, 0, ids[:3], segments=1)
    seg = _rows(source, 0, ["r03@0.00", "r03@5.00"], segments=3)
    t = pa.concat_tables([t.append_column("parent_id", pa.array(ids[:3])),
                          seg.append_column("parent_id", pa.array(["r03", "r03"]))])
    sink.write_table(t)
    plan = plan_reads(source, out, SPLITS, resumed=True, segmented=True)
    assert plan.groups["finished"] == 0 and plan.groups["cut_off"] == 1
    item = plan.items[0]
    assert sorted(item["done"]) == ids[:3] and sorted(plan.skip_segments) == ["r03@0.00", "r03@5.00"]
    # the cut-off recording is read again and cut again; its written segments are dropped after
    with pq.ParquetFile(item["path"]) as pf:
        read = pa.concat_tables(read_planned(pf, item, "id"))
    assert read["id"].to_pylist() == ["r03"] + [f"r{i:02d}" for i in range(4, 20)]
    cut = pa.table({"id": ["r03@0.00", "r03@5.00", "r03@9.00", "r04"],
                    resume.WRITTEN_SEGMENTS: [["r03@0.00", "r03@5.00"]] * 3 + [None]})
    assert DropWrittenSegments("id")(cut).to_pylist() == [{"id": "r03@9.00"}, {"id": "r04"}]
    # Right after cutting, only the written segments that settled there go: the others are
    # transcribed again so their recording's speaking-rate fences are whole, then dropped.
    from audiocurate import contract as C

    settled = C.mark(C.ensure_status(cut), drops={0: "too_short"})
    kept = DropWrittenSegments("id", settled_only=True)(settled)
    assert kept["id"].to_pylist() == ["r03@5.00", "r03@9.00", "r04"]
    assert DropWrittenSegments("id")(kept)["id"].to_pylist() == ["r03@9.00", "r04"]
    # the last segment failed in a model stage: an error row, which keeps its recording and count
    failed = _rows(source, 0, ["r03@9.00"], segments=3).append_column("parent_id", pa.array(["r03"]))
    failed = failed.set_column(failed.schema.get_field_index("error_stage"), "error_stage", pa.array(["judge"]))
    sink.write_table(failed.set_column(failed.schema.get_field_index("error"), "error", pa.array(["boom"])))
    assert pq.read_table(out.part_files("errors")[0]).column_names[:5] == ["id", "error_stage", "error", "parent_id",
                                                                            "segments"]
    plan = plan_reads(source, out, SPLITS, resumed=True, segmented=True)
    assert plan.groups["finished"] == 1 and plan.finished_rows == 4


def test_failed_segments_count_a_share_of_their_recording_not_a_row(source, tmp_path):
    """Three failed segments of one recording are one recording done, never two rows: a group of
    two recordings is not finished by them (the other recording would be lost)."""
    out = OutputDir(str(tmp_path / "out"))
    sink = CurationSink(out, "id", ["sentence"], segmented=True)
    t = _rows(source, 0, ["r00@0.00", "r00@5.00", "r00@9.00"], segments=3).append_column(
        "parent_id", pa.array(["r00"] * 3))
    t = t.set_column(t.schema.get_field_index("error_stage"), "error_stage", pa.array(["transcribe"] * 3))
    sink.write_table(t)
    plan = plan_reads(source, out, SPLITS, resumed=True, segmented=True)
    assert plan.groups["finished"] == 0 and plan.finished_rows == 1
    assert [g["group"] for g in plan.items[0]["groups"]][0] == 0 and plan.items[0]["done"] == ["r00"]


def test_an_inputs_own_segments_column_is_just_a_column_when_not_segmenting(source, tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    t = _rows(source, 0, _group_ids(0)).append_column("segments", pa.array([[1, 2]] * 4))
    CurationSink(out, "id", ["sentence", "segments"]).write_table(t)
    assert plan_reads(source, out, SPLITS, resumed=True).groups["finished"] == 1


def test_only_cut_off_groups_are_read_for_ids_and_each_file_gets_its_own(tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    for f in range(2):
        rows = [{"id": f"f{f}r{i}", "audio_bytes": b"x", "sentence": ""} for i in range(8)]
        pq.write_table(pa.Table.from_pylist(rows), d / f"p{f}.parquet", row_group_size=4)
    source = open_source(str(d), SourceConfig())
    parts = resume.partitions(source)
    out = OutputDir(str(tmp_path / "out"))
    sink = CurationSink(out, "id", ["sentence"])
    for p, ids in ((parts[0], ["f0r0"]), (parts[3], ["f1r5", "f1r6"])):
        sink.write_table(pa.table({"id": ids, PART: [p.key] * len(ids), "drop_reason": pa.nulls(len(ids), pa.string()),
                                   "error_stage": pa.nulls(len(ids), pa.string()), "error": pa.nulls(len(ids), pa.string())}))
    read = []
    real = resume._group_ids
    monkeypatch.setattr(resume, "_group_ids", lambda s, p: read.append(p.key) or real(s, p))
    plan = plan_reads(source, out, SPLITS, resumed=True)
    assert sorted(read) == sorted([parts[0].key, parts[3].key])
    done = {Path(i["path"]).name: sorted(i["done"]) for i in plan.items}
    assert done == {"p0.parquet": ["f0r0"], "p1.parquet": ["f1r5", "f1r6"]}
    assert plan.finished_rows == 3


def test_an_input_file_changed_since_is_refused_not_redone(source, tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    CurationSink(out, "id", ["sentence"]).write_table(_rows(source, 0, _group_ids(0)))
    rows = [{"id": f"r{i:02d}", "audio_bytes": b"xy", "sentence": f"s{i}"} for i in range(20)]
    pq.write_table(pa.Table.from_pylist(rows), source.files[0], row_group_size=4)  # rewritten: another size
    changed = open_source(source.files[0], SourceConfig())
    with pytest.raises(RuntimeError, match="not in the input any more"):
        plan_reads(changed, out, SPLITS, resumed=True)


def test_shards_without_partition_counts_ask_for_a_restart(source, tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    (tmp_path / "out" / "curated").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["r00"]}), tmp_path / "out" / "curated" / "part-old.parquet")
    with pytest.raises(RuntimeError, match="--restart"):
        plan_reads(source, out, SPLITS, resumed=True)


def test_resume_sits_above_sinks_and_sources_and_nothing_below_imports_it():
    """Resume plans from what the sinks wrote and what the sources hold; if a sink or a source
    reached back into it (lazily or for typing), the three would again load and change as one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "import_graph", Path(__file__).resolve().parent.parent / "benchmarks" / "import_graph.py")
    graph = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graph)
    below = {"audiocurate.sinks", "audiocurate.sources", "audiocurate.sources.parquet", "audiocurate.sources.errors",
             "audiocurate.run_state"}
    edges = {(a, b) for a, b, _ in graph.edges(graph.modules())}
    assert ("audiocurate.resume", "audiocurate.run_state") in edges
    assert ("audiocurate.resume", "audiocurate.sources.parquet") in edges
    assert not [(a, b) for a, b in edges if a in below and b == "audiocurate.resume"]
    # the run state sits under every reader and writer of an output: it imports none of the package
    assert not [(a, b) for a, b in edges if a == "audiocurate.run_state" and b.startswith("audiocurate")]
    # the Parquet reader imports neither the package that uses it nor the formats that open inputs
    assert not [(a, b) for a, b in edges if a == "audiocurate.sources.parquet" and b.startswith("audiocurate.sources")
                and b != "audiocurate.sources.errors"]
    # the report and the run-time exports fetch rejected clips through the source side
    assert not [(a, b) for a, b in edges if a.startswith("audiocurate.report") and b.startswith("audiocurate.exports")]
