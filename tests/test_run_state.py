"""The run state (run_state.py) and the one resume plan (resume.plan_resume), without Ray: the
record an output keeps of its run, and what is left of each kind of source."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiocurate import resume
from audiocurate.config import SourceConfig
from audiocurate.contract import PART
from audiocurate.resume import plan_reads, plan_resume
from audiocurate.run_state import FOOTER_KEY, SPLITS, OutputExistsError, RunState, read_progress
from audiocurate.sinks import CurationSink, OutputDir
from audiocurate.sources import open_source
from audiocurate.sources.stored import StoredRows

IDENTITY = {"input": "in", "fingerprint": "f1", "config": {"asr": {"model": "tiny"}}, "created": 1.0}


def _status(n: int, drop=None) -> dict:
    return {"drop_reason": [drop] * n, "error_stage": pa.nulls(n, pa.string()), "error": pa.nulls(n, pa.string())}


# ---- the record ------------------------------------------------------------------------------
def test_claim_binds_the_output_and_refuses_another_run(tmp_path):
    state = RunState(OutputDir(str(tmp_path / "out")))
    assert state.claim(IDENTITY, restart=False) is False  # a new output
    assert json.loads((tmp_path / "out" / "_state" / "run.json").read_text()) == IDENTITY
    assert state.claim({**IDENTITY, "created": 2.0}, restart=False) is True  # the same run, later: resumed
    other = {**IDENTITY, "config": {"asr": {"model": "large"}}}
    with pytest.raises(OutputExistsError, match=r"config\.asr\.model: 'tiny' before, 'large' now"):
        state.claim(other, restart=False)
    assert state.claim(other, restart=True) is False and state.identity() == other


def test_a_folder_audiocurate_did_not_write_is_never_claimed(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="did not write"):
        RunState(OutputDir(str(tmp_path / "mine"))).claim(IDENTITY, restart=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "rows" / "curated").mkdir(parents=True)  # our layout, but no record of the run
    (tmp_path / "rows" / "curated" / "part-x.parquet").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="no run state"):
        RunState(OutputDir(str(tmp_path / "rows"))).claim(IDENTITY, restart=False)


def test_restart_clears_rows_reports_and_record_but_the_lease(tmp_path):
    root = tmp_path / "out"
    state = RunState(OutputDir(str(root)))
    state.claim(IDENTITY, restart=False)
    for name in ("curated/part-a.parquet", "exports/hf/x", "_state/attempts/1.json", "_SUCCESS", "report.json",
                 "_state/lease.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    state.clear()
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == ["_state/lease.json"]
    assert not state.has_content()  # the lease alone is not output


def test_attempts_success_config_and_id_check_round_trip(tmp_path):
    state = RunState(OutputDir(str(tmp_path / "out")))
    state.record_attempt({"id": "b", "started": 2.0, "status": "finished"})
    state.record_attempt({"id": "a", "started": 1.0, "status": "failed"})
    (tmp_path / "out" / "_state" / "attempts" / ".tmp-x-c.json").write_text("{half")  # a write cut off
    assert [a["id"] for a in state.attempts()] == ["a", "b"]
    assert not state.is_complete()
    state.mark_complete({"input": 3})
    assert state.is_complete() and json.loads((tmp_path / "out" / "_SUCCESS").read_text()) == {"input": 3}
    state.unmark_complete()
    state.unmark_complete()  # twice: nothing to remove is fine
    assert not state.is_complete()
    assert state.recorded_config() is None and not state.ids_checked()
    state.record_config("asr:\n  backend: none\n")
    state.mark_ids_checked("in")
    assert state.recorded_config() == "asr:\n  backend: none\n" and state.ids_checked()


def test_an_output_written_before_the_move_reads_the_same(tmp_path):
    """The files as earlier versions wrote them (paths and contents): the record reads them."""
    root = tmp_path / "old"
    (root / "_state" / "attempts").mkdir(parents=True)
    (root / "_state" / "run.json").write_text(json.dumps(IDENTITY))
    (root / "_state" / "attempts" / "17-ab.json").write_text(json.dumps({"id": "17-ab", "started": 17, "limit": 4}))
    (root / "_state" / "config.yaml").write_text("source:\n  id_column: key\n")
    (root / "_SUCCESS").write_text("{}")
    (root / "curated").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"]}).replace_schema_metadata({FOOTER_KEY: b'{"k:0":2}'}),
                   root / "curated" / "part-1.parquet")
    out = OutputDir(str(root))
    state = out.state
    assert state.identity() == IDENTITY and state.attempts()[0]["limit"] == 4 and state.is_complete()
    assert state.recorded_config() == "source:\n  id_column: key\n"
    assert state.claim(IDENTITY, restart=False) is True
    assert read_progress(out).written == {"k:0": 2.0}


def test_progress_sums_each_partition_over_shards_and_splits(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    sink = CurationSink(out, "id", [])
    sink.write_table(pa.table({"id": ["a", "b", "c"], PART: ["k:0", "k:0", "k:1"], **_status(3)}))
    sink.write_table(pa.table({"id": ["d"], PART: ["k:0"], **_status(1, drop="silence")}))
    progress = read_progress(out, SPLITS)
    assert progress.written == {"k:0": 3.0, "k:1": 1.0}
    assert len(progress.shards["k:0"]) == 2 and len(progress.shards["k:1"]) == 1
    assert sorted(progress.rows.values()) == [1, 3] and not progress.unpartitioned_shards


# ---- one plan for every source kind -----------------------------------------------------------
@pytest.fixture
def parquet_source(tmp_path):
    """12 rows in 3 row groups of 4."""
    rows = [{"id": f"r{i:02d}", "audio_bytes": b"x", "sentence": f"s{i}"} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=4)
    return open_source(str(tmp_path / "in.parquet"), SourceConfig())


@pytest.fixture
def folder_source(tmp_path):
    """6 audio files listed from a folder (never decoded here)."""
    (tmp_path / "clips").mkdir()
    for i in range(6):
        (tmp_path / "clips" / f"c{i}.wav").write_bytes(b"RIFF")
    return open_source(str(tmp_path / "clips"), SourceConfig())


def test_a_parquet_source_is_planned_by_row_group(parquet_source, tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    keys = [p.key for p in resume.partitions(parquet_source)]
    sink = CurationSink(out, "id", ["sentence"])
    sink.write_table(pa.table({"id": ["r00", "r01", "r02", "r03"], PART: [keys[0]] * 4, **_status(4)}))
    sink.write_table(pa.table({"id": ["r05"], PART: [keys[1]], **_status(1)}))
    plan = plan_resume(parquet_source, out, resumed=True)
    assert (plan.unit, plan.done, plan.partial, plan.left) == ("row group", 1, 1, 1)
    assert (plan.input_rows, plan.finished_rows, plan.remaining) == (12, 5, 7)
    assert plan.reads == plan_reads(parquet_source, out, SPLITS, resumed=True).items
    assert [i["done"] for i in plan.reads] == [["r05"]] and plan.skip_ids == [] and plan.keep_ids is None
    fresh = plan_resume(parquet_source, out, resumed=False)  # not resumed: every row, nothing read of the output
    assert (fresh.done, fresh.partial, fresh.left, fresh.remaining) == (0, 0, 3, 12)
    limited = plan_resume(parquet_source, out, resumed=True, limit=6)
    assert limited.keep_ids == [f"r{i:02d}" for i in range(6)] and limited.remaining == 1


def test_a_folder_source_is_planned_by_row(folder_source, tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    CurationSink(out, "id", []).write_table(pa.table({"id": ["c1.wav", "c4.wav"], **_status(2)}))
    plan = plan_resume(folder_source, out, resumed=True)
    assert (plan.unit, plan.done, plan.partial, plan.left) == ("row", 2, 0, 4)
    assert sorted(plan.skip_ids) == ["c1.wav", "c4.wav"] and plan.reads is None and plan.groups is None
    assert (plan.input_rows, plan.finished_rows, plan.remaining) == (6, 2, 4)
    limited = plan_resume(folder_source, out, resumed=True, limit=3)  # c0..c2: only c1 is done in scope
    assert limited.keep_ids == ["c0.wav", "c1.wav", "c2.wav"]
    assert (limited.input_rows, limited.finished_rows, limited.remaining) == (3, 1, 2)


def test_a_cut_off_recording_is_partial_and_its_written_segments_are_skipped(folder_source, tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    segments = pa.table({"id": ["c0.wav@0.00", "c0.wav@5.00", "c2.wav@0.00"], "parent_id": ["c0.wav", "c0.wav", "c2.wav"],
                         "segments": pa.array([2, 2, 3], pa.int32()), **_status(3)})
    CurationSink(out, "id", [], segmented=True).write_table(segments)
    plan = plan_resume(folder_source, out, resumed=True, segmented=True)
    assert plan.skip_ids == ["c0.wav"] and plan.skip_segments == ["c2.wav@0.00"]
    assert (plan.done, plan.partial, plan.left, plan.remaining) == (1, 1, 4, 5)


def test_stored_rows_of_a_finished_output_are_planned_by_row(tmp_path):
    """`refilter`'s input: OUTPUT's own shards; DEST's progress is what is done."""
    finished = OutputDir(str(tmp_path / "finished"))
    sink = CurationSink(finished, "id", [])
    sink.write_table(pa.table({"id": ["a", "b", "c"], **_status(3)}))
    sink.write_table(pa.table({"id": ["d"], **_status(1, drop="silence")}))
    source = StoredRows.open(finished, "id")
    dest = OutputDir(str(tmp_path / "dest"))
    CurationSink(dest, "id", []).write_table(pa.table({"id": ["b", "d"], **_status(2)}))
    plan = plan_resume(source, dest, resumed=True)
    assert (plan.unit, plan.input_rows, plan.finished_rows, plan.remaining) == ("row", 4, 2, 2)
    assert sorted(plan.skip_ids) == ["b", "d"]
