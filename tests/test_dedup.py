"""Near-duplicate detection: the fingerprint on real speech, the grouping steps without Ray, and
the corpus pass on a real output across files and row groups, killed half-way and done again."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tempfile
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from audiocurate import contract as C
from audiocurate.audio import decode_audio
from audiocurate.corpus.dedup import (SEP, bucket_pairs, both_directions, large_star, node_keys, pairs_in_memory,
                                      small_star)
from audiocurate.corpus.fingerprint import fingerprint, similarity
from audiocurate.compaction import _journal
from audiocurate.run_state import FOOTER_KEY
from audiocurate.sinks import CurationSink, OutputDir

from conftest import have, speak

# The corpus-pass tests below start Ray passes: about 40 s each on 2 cores (marked slow).

SENTENCES = ["Rivers carve valleys slowly over many thousands of years.",
             "Photosynthesis turns light, water and carbon dioxide into sugar.",
             "Ice floats because it is less dense than liquid water."]


def _pcm(encoded: bytes) -> np.ndarray:
    return decode_audio(encoded).pcm


def _mp3_64k(pcm: np.ndarray) -> np.ndarray:
    if not have("ffmpeg"):
        pytest.skip("ffmpeg is not installed")
    with tempfile.TemporaryDirectory() as d:
        sf.write(f"{d}/a.wav", pcm, 16000, subtype="PCM_16")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", f"{d}/a.wav", "-b:a", "64k", f"{d}/a.mp3"], check=True)
        return _pcm(open(f"{d}/a.mp3", "rb").read())


def _gain_cut(pcm: np.ndarray, db: float, head_ms: int, tail_ms: int) -> np.ndarray:
    out = np.clip(pcm.astype(np.float32) * 10 ** (db / 20), -32768, 32767).astype(np.int16)
    return out[head_ms * 16: len(out) - tail_ms * 16]


@pytest.fixture(scope="module")
def readings():
    """Per sentence: the original, three copies (FLAC, MP3 64k, -4 dB with 60 ms cut) and another voice."""
    out = {}
    for s, text in enumerate(SENTENCES):
        base = _pcm(speak(text, voice="en-us"))
        out[s] = {"orig": base, "flac": _pcm(_flac(base)), "mp3": _mp3_64k(base),
                  "cut": _gain_cut(base, -4, 60, 0), "other_voice": _pcm(speak(text, voice="en-gb", speed=140))}
    return out


def _flac(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def test_copies_agree_and_another_voice_reading_the_same_sentence_does_not(readings):
    for clips in readings.values():
        fp = {k: fingerprint(v) for k, v in clips.items()}
        assert fp["flac"] == fp["orig"]  # the same decoded samples: the same fingerprint
        assert similarity(fp["orig"], fp["mp3"]) >= 0.3
        assert similarity(fp["orig"], fp["cut"]) >= 0.3
        assert similarity(fp["mp3"], fp["cut"]) >= 0.25
        assert similarity(fp["orig"], fp["other_voice"]) < 0.15


def test_pairs_found_through_band_buckets(readings):
    ids, fps = [], []
    for s, clips in readings.items():
        for name, pcm in clips.items():
            ids.append(f"{s}-{name}")
            fps.append(fingerprint(pcm))
    pairs = pairs_in_memory(ids, fps, 0.2)
    assert not [p for p in pairs if "other_voice" in p[0] or "other_voice" in p[1]]
    assert not [p for p in pairs if p[0][0] != p[1][0]]  # never across sentences
    assert len(pairs) >= 3 * 5  # of the 6 true pairs per sentence, at least 5 found directly


def test_a_silent_clip_has_no_band_and_no_similarity():
    silent = fingerprint(np.zeros(16000, np.int16))
    assert similarity(silent, silent) == 0.0
    assert pairs_in_memory(["a", "b"], [silent, silent], 0.2) == set()


def test_node_order_is_the_keep_rule():
    t = pa.table({"id": ["c", "a", "b", "d"], "edu_score": [4, 3, 4, None], "duration_s": [2.0, 9.0, 5.0, 9.0]})
    nodes = node_keys(t, "id", ["edu_score", "duration_s"])
    ranked = [n.split(SEP)[1] for n in sorted(nodes)]
    assert ranked == ["b", "c", "a", "d"]  # best score, then longest; a null score last


def test_a_big_bucket_pairs_with_its_best_only():
    group = pa.table({"node": [f"n{i:03d}" for i in range(100)]})
    pairs = bucket_pairs(max_bucket=64)(group)
    assert pairs.num_rows == 99 and set(pairs["a"].to_pylist()) == {"n000"}
    assert bucket_pairs(max_bucket=64)(pa.table({"node": ["x", "y", "z"]})).num_rows == 3


def _star_rounds(edges: list[tuple[str, str]]) -> dict[str, str]:
    """The Ray rounds of `dedup.components`, run here with a dict as the groupby."""
    current = pa.table({"u": [a for a, _ in edges], "v": [b for _, b in edges]})
    for _ in range(20):
        before = sorted(zip(current["u"].to_pylist(), current["v"].to_pylist()))
        for step in (large_star, small_star):
            both = both_directions(current)
            groups: dict[str, list[str]] = {}
            for u, v in zip(both["u"].to_pylist(), both["v"].to_pylist()):
                groups.setdefault(u, []).append(v)
            parts = [step(pa.table({"u": [u] * len(vs), "v": vs})) for u, vs in sorted(groups.items())]
            current = pa.concat_tables(parts)
        if sorted(zip(current["u"].to_pylist(), current["v"].to_pylist())) == before:
            break
    return dict(zip(current["u"].to_pylist(), current["v"].to_pylist()))


def test_chains_become_one_group_rooted_at_the_smallest():
    roots = _star_rounds([("e", "d"), ("d", "c"), ("c", "b"), ("b", "a"), ("x", "z"), ("y", "z")])
    assert roots == {"b": "a", "c": "a", "d": "a", "e": "a", "y": "x", "z": "x"}


def _calls():
    def calls(group: pa.Table) -> pa.Table:
        """One row per call: the partitions and keys it saw (a closure: Ray's workers cannot import tests)."""
        return pa.table({"parts": [sorted(set(group["part"].to_pylist()))], "keys": [sorted(group["k"].to_pylist())]})

    return calls


def test_each_partition_of_a_block_gets_its_own_call():
    from audiocurate.corpus.dedup import _each_partition

    block = pa.table({"k": [5, 1, 7, 3, 9], "part": [2, 0, 2, 1, 0]})
    calls = pa.concat_tables(list(_each_partition(_calls())(block))).to_pylist()
    assert calls == [{"parts": [0], "keys": [1, 9]}, {"parts": [1], "keys": [3]}, {"parts": [2], "keys": [5, 7]}]
    assert list(_each_partition(_calls())(block.slice(0, 0))) == []


def test_a_shuffle_has_the_partitions_asked_for_whatever_the_input_blocks(ray_local):
    """One input block, 8 partitions asked: 8 reduce tasks, each holding one whole partition
    (a groupby under the sort shuffle ran one reduce task per input block: 1 here)."""
    import ray

    from audiocurate.corpus.dedup import by_partition, sort_shuffled, with_partition

    keys = np.arange(2000, dtype=np.int64)
    ds = sort_shuffled(ray.data.from_arrow(pa.table({"k": keys})))
    out = by_partition(ds, "k", 8, _calls()).materialize()
    calls = out.take_all()
    assert sorted(c["parts"][0] for c in calls) == list(range(8)) and all(len(c["parts"]) == 1 for c in calls)
    want = with_partition("k", 8)(pa.table({"k": keys}))
    for c in calls:
        assert c["keys"] == sorted(want.filter(pc.equal(want["part"], c["parts"][0]))["k"].to_pylist())
    assert re.search(r"SortReduce: \d+ tasks executed, 8 blocks produced", out.stats()), out.stats()


# ---- the corpus pass on a real output --------------------------------------------------------------

def _output(tmp_path, readings) -> tuple[OutputDir, list[str]]:
    """A run's output: curated rows in two shards (the copies of one clip spread over both, the
    first shard with two row groups), resume counts in their footers, and one rejected row."""
    out = OutputDir(str(tmp_path / "out"))
    sink = CurationSink(out, "id", ["sentence"])
    rows = []
    for s, clips in readings.items():
        for name, pcm in clips.items():
            rows.append({"id": f"s{s}-{name}", "sentence": SENTENCES[s], "fingerprint": fingerprint(pcm),
                         "edu_score": 4 if name == "mp3" else 3, "duration_s": len(pcm) / 16000,
                         "audio": {"bytes": b"x", "path": f"s{s}-{name}.flac"}, C.PART: f"file:{s}"})
    rows.append({**rows[0], "id": "silent", "fingerprint": fingerprint(np.zeros(8000, np.int16)), C.PART: "file:9"})
    table = pa.Table.from_pylist(rows)
    first, second = table.slice(0, 9), table.slice(9)
    sink.write_table(first)
    sink.write_table(second)
    rejected = table.slice(0, 1).set_column(0, "id", pa.array(["low"])).append_column(
        C.DROP_REASON, pa.array(["low_edu_score"]))
    sink.write_table(rejected)
    # the first shard rewritten with two row groups, as a compacted shard would be
    shard = [p for p in out.part_files("curated") if "s0-orig" in pq.read_table(p)["id"].to_pylist()][0]
    t = pq.read_table(shard)
    pq.write_table(t, shard, row_group_size=4)
    assert pq.ParquetFile(shard).num_row_groups > 1
    return out, table["id"].to_pylist() + ["low"]


def _state(out: OutputDir) -> dict:
    tables = {s: pa.concat_tables([pq.read_table(p) for p in out.part_files(s)], promote_options="default")
              for s in ("curated", "rejected")}
    counts: Counter = Counter()
    for split in ("curated", "rejected"):
        for p in out.part_files(split):
            counts.update(json.loads(pq.read_schema(p).metadata[FOOTER_KEY]))
    rejected = tables["rejected"].to_pylist()
    return {"curated": sorted(tables["curated"]["id"].to_pylist()),
            "rejected": sorted((r["id"], r[C.DROP_REASON], r.get("duplicate_of")) for r in rejected),
            "counts": dict(counts)}


@pytest.fixture
def dedup_config():
    from audiocurate.config import PipelineConfig

    return PipelineConfig.load(overrides=["dedup.enabled=true", "ray.progress=false"])


def _assert_deduplicated(after: dict, before: dict, ids: list[str]) -> None:
    for s in range(3):  # the MP3 copy has the best score: it stays, the others name it
        assert f"s{s}-mp3" in after["curated"] and f"s{s}-other_voice" in after["curated"]
        for name in ("orig", "flac", "cut"):
            assert (f"s{s}-{name}", "duplicate", f"s{s}-mp3") in after["rejected"]
    assert "silent" in after["curated"] and ("low", "low_edu_score", None) in after["rejected"]
    assert len(after["rejected"]) == 1 + 3 * 3
    assert sorted(after["curated"] + [r[0] for r in after["rejected"]]) == sorted(ids)  # every row once
    assert after["counts"] == before["counts"]  # resume's record: each row group keeps its total


@pytest.mark.slow
def test_a_duplicate_group_across_files_and_row_groups(tmp_path, readings, ray_local, dedup_config):
    from audiocurate.corpus.passes import dedup_pass

    out, ids = _output(tmp_path, readings)
    before = _state(out)
    assert dedup_pass(out, dedup_config, "id") == 3 * 3
    after = _state(out)
    _assert_deduplicated(after, before, ids)
    assert not _journal(out)
    assert dedup_pass(out, dedup_config, "id") == 0 and _state(out) == after  # again: nothing to do


@pytest.mark.slow
def test_a_pass_killed_half_way_is_finished_exactly_by_the_next(tmp_path, readings, ray_local, dedup_config,
                                                                 monkeypatch):
    from audiocurate.compaction import recover
    from audiocurate.corpus.passes import dedup_pass

    out, ids = _output(tmp_path, readings)
    before = _state(out)
    # Killed in the middle of one shard's move (its files written, the shard not yet deleted),
    # after another shard's move finished: the moves run here, in this process, to be cut off.
    monkeypatch.setattr("audiocurate.corpus.shards.apply_moves", _apply_here_and_die_in_second)
    with pytest.raises(_Killed):
        dedup_pass(out, dedup_config, "id")
    assert _journal(out)  # the cut-off move's journal entry
    recover(out)  # what a run does first
    monkeypatch.undo()
    dedup_pass(out, dedup_config, "id")
    _assert_deduplicated(_state(out), before, ids)


class _Killed(BaseException):
    pass


def _apply_here_and_die_in_second(out, id_column, moves):
    from audiocurate.corpus import moves as M

    table = pa.Table.from_pylist(moves.take_all())
    shards = sorted(set(table["path"].to_pylist()))
    M.move_to_rejected(out, shards[0], id_column, _of(table, shards[0]))
    real_delete = out.fs.delete_file

    class DyingFs:
        def __getattr__(self, name):
            return getattr(real, name)

        def delete_file(self, path):
            if path == shards[1]:
                raise _Killed()
            return real_delete(path)

    real = out.fs
    out.fs = DyingFs()
    try:
        M.move_to_rejected(out, shards[1], id_column, _of(table, shards[1]))
    finally:
        out.fs = real


def _of(table: pa.Table, shard: str) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.equal(table["path"], shard)).drop_columns(["path"])


@pytest.mark.slow
def test_a_run_with_dedup_rejects_the_copies_and_accounts_for_every_row(tmp_path, readings, ray_local):
    """End to end through `run` with no model (transcripts from the input, no judge): the copies
    are fingerprinted while decoding, grouped after the streaming pass, and every input row is in
    one output; running the command again changes nothing."""
    from audiocurate.config import PipelineConfig
    from audiocurate.pipeline import run

    rows = [{"id": f"s{s}-{name}", "audio_bytes": _flac(pcm), "sentence": SENTENCES[s]}
            for s, clips in readings.items() for name, pcm in clips.items()]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=4)
    config = PipelineConfig.load(overrides=["asr.backend=none", "asr.text_column=sentence", "judge.backend=none",
                                            "dedup.enabled=true", "ray.progress=false", "ray.probe_engines=false",
                                            "output.rows_per_shard=3"])
    report = run(config, str(src), str(tmp_path / "out"), echo=lambda s: None)
    assert report["accounting"]["ok"]
    out = OutputDir(str(tmp_path / "out"))
    state = _state(out)
    duplicates = [r for r in state["rejected"] if r[1] == "duplicate"]
    assert len(duplicates) == 3 * 3  # of each sentence's four copies one stays
    for s in range(3):
        kept = [i for i in state["curated"] if i.startswith(f"s{s}-") and i != f"s{s}-other_voice"]
        assert len(kept) == 1 and all(r[2] == kept[0] for r in duplicates if r[0].startswith(f"s{s}-"))
        assert f"s{s}-other_voice" in state["curated"]
    again = run(config, str(src), str(tmp_path / "out"), echo=lambda s: None)
    assert again["accounting"]["ok"] and _state(out) == state
