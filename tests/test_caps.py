"""Per-group caps (`corpus.max_hours_per`) on a real output in Ray: the best-scored clips of each
speaker are kept up to the cap, the rest rejected as `over_cap`, the same every time."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiocurate import contract as C
from audiocurate.run_state import FOOTER_KEY
from audiocurate.sinks import CurationSink, OutputDir

pytestmark = pytest.mark.slow  # a Ray pass: about 20 s on 2 cores


def _output(path) -> OutputDir:
    out = OutputDir(str(path))
    sink = CurationSink(out, "id", ["client_id"])
    # speaker a: five clips of 1,000 s (scores 5, 4, 4, 3, 3); b: one; c: none of its clip is over
    rows = [{"id": f"a{i}", "client_id": "a", "edu_score": s, "duration_s": 1000.0, C.PART: "f:0"}
            for i, s in enumerate([3, 5, 4, 3, 4])]
    rows += [{"id": "b0", "client_id": "b", "edu_score": 3, "duration_s": 5000.0, C.PART: "f:1"},
             {"id": "c0", "client_id": "c", "edu_score": 4, "duration_s": 10.0, C.PART: "f:1"}]
    table = pa.Table.from_pylist(rows)
    sink.write_table(table.slice(0, 3))
    sink.write_table(table.slice(3))
    return out


def _routing(out: OutputDir) -> tuple[list[str], list[tuple[str, str]], dict]:
    cur = pa.concat_tables([pq.read_table(p) for p in out.part_files("curated")])
    rej = pa.concat_tables([pq.read_table(p) for p in out.part_files("rejected")], promote_options="default")
    counts: Counter = Counter()
    for split in ("curated", "rejected"):
        for p in out.part_files(split):
            counts.update(json.loads(pq.read_schema(p).metadata[FOOTER_KEY]))
    return (sorted(cur["id"].to_pylist()), sorted(zip(rej["id"].to_pylist(), rej[C.DROP_REASON].to_pylist())),
            dict(counts))


def test_each_speaker_keeps_its_best_clips_up_to_the_cap(tmp_path, ray_local):
    from audiocurate.config import PipelineConfig
    from audiocurate.corpus.passes import caps_pass

    config = PipelineConfig.load(overrides=["corpus.max_hours_per={column: client_id, hours: 1.0}"])
    out = _output(tmp_path / "out")
    counts_before = _routing(out)[2] if out.part_files("rejected") else None
    assert caps_pass(out, config, "id") == 2 + 1
    curated, rejected, counts = _routing(out)
    # a: 5, 4, 4 fit in 3,600 s (ties by id: a2 before a4); a0 and a3 (score 3) do not. b: one clip
    # of 5,000 s alone is over the cap. c: under it.
    assert curated == ["a1", "a2", "a4", "c0"]
    assert rejected == [("a0", "over_cap"), ("a3", "over_cap"), ("b0", "over_cap")]
    assert counts == {"f:0": 5.0, "f:1": 2.0}  # every row group's rows still counted once
    assert caps_pass(out, config, "id") == 0  # the same selection: nothing more to move
    assert counts_before is None
