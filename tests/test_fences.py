"""Speaking-rate fences per recording or group, taken over all of its rows as a corpus pass:
the decision on Arrow tables, the pass on a real output spread over shards (killed half-way and
finished by the next), and a grouped run end to end with every row accounted for once."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from audiocurate import contract as C
from audiocurate.config import PipelineConfig, SpeakingRateFilter
from audiocurate.corpus.fences import outliers
from audiocurate.filters.speaking_rate import CPS_OUTLIER, SPEECH_CPS, SpeakingRateOutliers
from audiocurate.sinks import CurationSink, OutputDir

# One speaker's rates, written in two blocks: the fast pair looks ordinary beside its own block's
# rates, and is far outside the fences of the speaker's rates taken together.
BLOCK_A = [10.0, 10.5, 14.0, 13.5]
BLOCK_B = [10.0, 10.2, 9.8, 10.1, 9.9, 10.3]


def _rates(values: list[float], first: int, curated: bool = True) -> pa.Table:
    return pa.table({"path": [f"shard{first // 4}"] * len(values), "id": [f"r{first + i}" for i in range(len(values))],
                     "group": ["spk"] * len(values), SPEECH_CPS: values, "curated": [curated] * len(values)})


def test_fences_use_every_row_of_the_group_not_one_block():
    rate = SpeakingRateFilter()
    whole = outliers(rate.iqr_k, rate.min_segments)(pa.concat_tables([_rates(BLOCK_A, 0), _rates(BLOCK_B, 4)]))
    assert sorted(whole["id"].to_pylist()) == ["r2", "r3"] and set(whole[C.DROP_REASON].to_pylist()) == {CPS_OUTLIER}
    # The same rows judged block by block, as the stream's `scope: block` does: nothing is outside.
    in_block = SpeakingRateOutliers(SpeakingRateFilter(scope="block"))
    for block in (BLOCK_A, BLOCK_B):
        table = pa.table({"transcript": ["x" * int(r * 10) for r in block], "duration_s": [10.0] * len(block),
                          "parent_id": ["spk"] * len(block)})
        assert in_block.evaluate(table, np.arange(len(block)))[0] == [None] * len(block)


def test_rejected_rows_count_for_the_fences_but_only_curated_rows_move():
    rate = SpeakingRateFilter()
    # the fast pair already rejected by a later gate: they still widen nothing, and stay where they are
    moved = outliers(rate.iqr_k, rate.min_segments)(pa.concat_tables([_rates(BLOCK_A, 0, curated=False),
                                                                       _rates(BLOCK_B, 4)]))
    assert moved.num_rows == 0
    # too few rows for quartiles: not judged
    assert outliers(rate.iqr_k, rate.min_segments)(_rates([1.0, 10.0, 30.0], 0)).num_rows == 0


def test_the_stream_only_measures_when_a_corpus_pass_decides():
    f = SpeakingRateOutliers(SpeakingRateFilter(scope="column", column="client_id"))
    table = pa.table({"transcript": ["x" * 100, "x" * 50], "duration_s": [10.0, 10.0], "client_id": ["a", "a"]})
    reasons, measured = f.evaluate(table, np.arange(2))
    assert reasons == [None, None] and measured == {SPEECH_CPS: [10.0, 5.0]}
    assert f.needs == ("transcript", "duration_s", "client_id")
    with pytest.raises(ValueError, match="column"):
        SpeakingRateFilter(scope="column")
    with pytest.raises(ValueError, match="no column 'speaker'"):
        SpeakingRateOutliers.configured(PipelineConfig.load(overrides=[
            "filters.speaking_rate.scope=column", "filters.speaking_rate.column=speaker"]), {"id", "client_id"})


# ---- the pass on a real output -----------------------------------------------------------------------

def _output(path) -> tuple[OutputDir, list[str]]:
    """Speaker `spk`'s rows over two curated shards (one with two row groups) and rejected/ (a
    row a later gate rejected, with its rate, and one rejected before the step, without), and a
    second speaker whose rates are even."""
    out = OutputDir(str(path))
    sink = CurationSink(out, "id", ["client_id"])
    rows = [{"id": f"spk{i}", "client_id": "spk", SPEECH_CPS: r, "duration_s": 10.0, C.PART: "f:0"}
            for i, r in enumerate(BLOCK_A + BLOCK_B)]
    rows += [{"id": f"even{i}", "client_id": "even", SPEECH_CPS: 12.0 + 0.1 * i, "duration_s": 10.0, C.PART: "f:1"}
             for i in range(5)]
    table = pa.Table.from_pylist(rows)
    sink.write_table(table.slice(0, 3))  # the fast pair: one row in each shard
    sink.write_table(table.slice(3))
    sink.write_table(pa.Table.from_pylist([
        {"id": "late", "client_id": "spk", SPEECH_CPS: 10.05, "duration_s": 10.0, C.PART: "f:1",
         C.DROP_REASON: "low_edu_score"},
        {"id": "early", "client_id": "spk", SPEECH_CPS: None, "duration_s": 0.1, C.PART: "f:1",
         C.DROP_REASON: "too_short"}]))
    shard = [p for p in out.part_files("curated") if "spk4" in pq.read_table(p)["id"].to_pylist()][0]
    pq.write_table(pq.read_table(shard), shard, row_group_size=3)
    return out, table["id"].to_pylist() + ["late", "early"]


def _state(out: OutputDir) -> dict:
    from test_caps import _routing

    curated, rejected, counts = _routing(out)
    return {"curated": curated, "rejected": rejected, "counts": counts}


@pytest.fixture
def grouped_config():
    return PipelineConfig.load(overrides=["filters.speaking_rate.scope=column", "filters.speaking_rate.column=client_id",
                                          "ray.progress=false"])


def _assert_fenced(after: dict, before: dict, ids: list[str]) -> None:
    assert ("spk2", CPS_OUTLIER) in after["rejected"] and ("spk3", CPS_OUTLIER) in after["rejected"]
    assert ("late", "low_edu_score") in after["rejected"] and ("early", "too_short") in after["rejected"]
    assert len(after["rejected"]) == 4 and not [i for i in after["curated"] if i in ("spk2", "spk3")]
    assert sorted(after["curated"] + [r[0] for r in after["rejected"]]) == sorted(ids)  # every row once
    assert after["counts"] == before["counts"]


@pytest.mark.slow
def test_a_group_spread_over_shards_is_fenced_whole_and_a_killed_pass_is_finished_exactly(
        tmp_path, ray_local, grouped_config, monkeypatch):
    from test_dedup import _apply_here_and_die_in_second, _Killed

    from audiocurate.compaction import _journal, recover
    from audiocurate.corpus.fences import fences_pass

    out, ids = _output(tmp_path / "out")
    before = _state(out)
    monkeypatch.setattr("audiocurate.corpus.shards.apply_moves", _apply_here_and_die_in_second)
    with pytest.raises(_Killed):  # one shard's move done, the other's files written, its shard not deleted
        fences_pass(out, grouped_config, "id")
    assert _journal(out)
    recover(out)
    monkeypatch.undo()
    fences_pass(out, grouped_config, "id")  # whatever the killed pass and `recover` left undone
    after = _state(out)
    _assert_fenced(after, before, ids)
    assert fences_pass(out, grouped_config, "id") == 0 and _state(out) == after  # the same decision again


# ---- end to end ------------------------------------------------------------------------------------

def _clip(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    pcm = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, pcm.astype(np.float32), 16000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.slow
def test_a_grouped_run_fences_each_speaker_over_all_of_its_clips(tmp_path, ray_local):
    """Through `run` with no model (transcripts from the input, no judge): speaker a's clips are
    spread over row groups, blocks and shards; its two fast clips are judged against all ten."""
    from audiocurate.pipeline import run

    texts = {"a": [int(r * 2) for r in BLOCK_A + BLOCK_B], "b": [24, 25, 24, 26, 25]}
    rows = [{"id": f"{spk}{i}", "client_id": spk, "audio_bytes": _clip(2.0, i), "sentence": "x" * n}
            for spk, lengths in texts.items() for i, n in enumerate(lengths)]
    rows.append({"id": "nobody", "client_id": None, "audio_bytes": _clip(2.0, 99), "sentence": "x" * 40})
    rows.append({"id": "broken", "client_id": "a", "audio_bytes": b"not audio", "sentence": "x" * 20})
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=3)
    config = PipelineConfig.load(overrides=[
        "asr.backend=none", "asr.text_column=sentence", "judge.backend=none", "filters.speaking_rate.scope=column",
        "filters.speaking_rate.column=client_id", "ray.progress=false", "ray.probe_engines=false",
        "output.rows_per_shard=3", "output.compact_mb=null", "decode.read_block_mb=0.05"])
    report = run(config, str(src), str(tmp_path / "out"), echo=lambda s: None)
    assert report["accounting"]["ok"]
    out = OutputDir(str(tmp_path / "out"))
    assert len(out.part_files("curated")) > 2
    state = _state(out)
    assert [r for r in state["rejected"] if r[1] == CPS_OUTLIER] == [("a2", CPS_OUTLIER), ("a3", CPS_OUTLIER)]
    errors = pa.concat_tables([pq.read_table(p) for p in out.part_files("errors")])["id"].to_pylist()
    assert errors == ["broken"] and "nobody" in state["curated"]  # no group: not judged
    assert sorted(state["curated"] + [r[0] for r in state["rejected"]] + errors) == sorted(r["id"] for r in rows)
    again = run(config, str(src), str(tmp_path / "out"), echo=lambda s: None)
    assert again["accounting"]["ok"] and _state(out) == state
