"""`audiocurate refilter`: OUTPUT's stored rows routed under new gates, with no model, give
what a fresh run under those gates gives, into a normal, exact, resumable output."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from conftest import QUICK_MODELS

from audiocurate.cli import main
from audiocurate.config import PipelineConfig
from audiocurate.filters import Filter
from audiocurate.pipeline import run
from audiocurate.run_state import SPLITS
from audiocurate.sinks import OutputDir

# No model: transcripts read from the input's `sentence`, no judge; the gates decide on the
# decoded audio's stored measures.
BASE = ["asr.backend=none", "asr.text_column=sentence", "judge.backend=none", "ray.progress=false",
        "ray.probe_engines=false", "output.rows_per_shard=4"]


def _routing(uri: str) -> dict[str, tuple[str, object]]:
    """Every row's output and drop reason (errors: their stage)."""
    out = OutputDir(uri)
    seen: dict[str, tuple[str, object]] = {}
    for split in SPLITS:
        for path in out.part_files(split):
            t = pq.read_table(path)
            why = {"rejected": "drop_reason", "errors": "error_stage"}.get(split)
            for row in t.to_pylist():
                assert row["id"] not in seen, f"{row['id']} twice"
                seen[row["id"]] = (split, row[why] if why else None)
    return seen


def test_each_gate_decides_only_the_rows_that_reached_its_stage():
    """Arrow rows as OUTPUT stored them, routed at `min_score: 5`: a curated row scored 4 is
    now low_edu_score; a row rejected at decode keeps its reason, having no score to judge;
    an error row stays one."""
    from audiocurate import contract as C
    from audiocurate.corpus.refilter import input_columns
    from audiocurate.corpus.replay import RefilterStage, reached_columns
    from audiocurate.plan import placed_filters

    config = PipelineConfig.load(overrides=["select.min_score=5", "filters.hallucination.enabled=false"])
    signals = ("duration_s", "peak_dbfs", "transcript", "language", "language_prob", "edu_score")
    stored = [("kept", (3.0, -3.0, "a b c", "en", 0.99, 4), None, None),
              ("short", (0.1, -3.0, None, None, None, None), "too_short", None),
              ("broken", (None,) * 6, None, "decode")]
    rows = [{"id": i, **dict(zip(signals, values)), "drop_reason": why, "error_stage": stage}
            for i, values, why, stage in stored]
    table = pa.Table.from_pylist(rows)
    placed = placed_filters(config, input_columns(table.column_names, (config,)))
    routed = RefilterStage(placed, reached_columns(config), "id", "unused")(table)
    assert routed[C.DROP_REASON].to_pylist() == ["low_edu_score", "too_short", None]
    assert routed[C.ERROR_STAGE].to_pylist() == [None, None, "decode"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_parquet, ray_local):
    """The demo set curated at the default gates (OUTPUT, `a`) and, fresh, at a stricter
    minimum duration (`b`): the curated clips' median, so that the gate moves about half."""
    root = tmp_path_factory.mktemp("refilter")
    quiet = {"echo": lambda s: None}
    base = run(PipelineConfig.load(overrides=BASE), demo_parquet, str(root / "a"), **quiet)
    durations = sorted(pq.read_table(str(root / "a" / "curated"), columns=["duration_s"])["duration_s"].to_pylist())
    stricter = f"filters.duration.min_s={round(durations[len(durations) // 2], 2)}"
    fresh = run(PipelineConfig.load(overrides=[*BASE, stricter]), demo_parquet, str(root / "b"), **quiet)
    assert base["accounting"]["ok"] and fresh["accounting"]["ok"]
    return root, stricter


@pytest.mark.slow
def test_refilter_to_a_stricter_gate_routes_as_a_fresh_run_and_reruns_exactly(runs):
    runs, STRICTER = runs
    dest = str(runs / "a_to_b")
    assert main(["refilter", str(runs / "a"), dest, "--set", STRICTER, "--no-progress"]) == 0
    routed, fresh, before = _routing(dest), _routing(str(runs / "b")), _routing(str(runs / "a"))
    assert routed == fresh
    moved = [i for i in routed if routed[i] != before[i]]
    assert moved and all(routed[i] == ("rejected", "too_short") for i in moved), "the stricter gate moved nothing"
    report = json.loads((runs / "a_to_b" / "report.json").read_text())
    assert report["accounting"]["ok"] and (runs / "a_to_b" / "_SUCCESS").exists()
    recorded = PipelineConfig.model_validate(__import__("yaml").safe_load(
        (runs / "a_to_b" / "_state" / "config.yaml").read_text()))
    # DEST records the configuration it was made with
    assert f"filters.duration.min_s={recorded.filters.duration.min_s}" == STRICTER
    curated = pq.read_table(str(runs / "a_to_b" / "curated")).to_pylist()
    assert curated and all(r["audio"]["bytes"] for r in curated)
    # the same command again: DEST is complete, nothing moves or doubles
    assert main(["refilter", str(runs / "a"), dest, "--set", STRICTER, "--no-progress"]) == 0
    assert _routing(dest) == routed
    # a DEST that lost a shard (a run cut off before writing it) is completed exactly
    lost = sorted((runs / "a_to_b" / "curated").glob("*.parquet"))[0]
    lost.unlink()
    (runs / "a_to_b" / "_SUCCESS").unlink()
    assert main(["refilter", str(runs / "a"), dest, "--set", STRICTER, "--no-progress"]) == 0
    assert _routing(dest) == routed and (runs / "a_to_b" / "_SUCCESS").exists()


def test_a_row_stopped_before_a_stage_keeps_its_reason_when_the_gate_loosens(runs):
    """OUTPUT at the stricter gate, refiltered back to the default: rows rejected as too short
    never got a transcript, so they are not routed past the transcribe stage without a model
    and keep `too_short`; every other row is routed as the run at the default gate routed it
    (a short clip that is also silent is `silence` now, the gate after duration)."""
    runs, _ = runs
    dest = str(runs / "b_to_a")
    assert main(["refilter", str(runs / "b"), dest, "--set", "filters.duration.min_s=0.3", "--no-progress"]) == 0
    routed, stricter, default = _routing(dest), _routing(str(runs / "b")), _routing(str(runs / "a"))
    undecided = {i for i in routed if stricter[i] == ("rejected", "too_short") and default[i][0] == "curated"}
    assert undecided
    assert routed == {i: stricter[i] if i in undecided else default[i] for i in default}


def test_a_setting_that_needs_a_signal_not_stored_is_refused_by_name(runs, capsys):
    runs, _ = runs
    dest = runs / "refused"
    assert main(["refilter", str(runs / "a"), str(dest), "--set", "dedup.enabled=true"]) == 2
    err = capsys.readouterr().err
    assert "fingerprint" in err and "did not store" in err
    assert not dest.exists()


class FewWords(Filter):
    """A gate after Whisper: transcripts of fewer than `min_words` words."""

    needs = ("transcript",)

    def __init__(self, min_words: int):
        self.min_words = min_words

    def reason(self, row):
        return "few_words" if len((row["transcript"] or "").split()) < self.min_words else None


@pytest.mark.slow
def test_a_row_rejected_after_its_signals_were_taken_comes_back_with_its_clip(runs, demo_parquet, tmp_path):
    """A gate after the transcribe stage, dropped by the refilter: the rows it rejected had
    every signal, so they are curated again, their audio read back from OUTPUT's input; the
    result is the run without that gate, clip for clip."""
    runs, _ = runs
    gated = PipelineConfig.load(overrides={**dict(o.split("=", 1) for o in BASE),
                                           "filters.custom": [{"type": f"{__name__}:FewWords",
                                                               "args": {"min_words": 18}}]})
    report = run(gated, demo_parquet, str(tmp_path / "gated"), echo=lambda s: None)
    before = _routing(str(tmp_path / "gated"))
    assert report["accounting"]["ok"] and ("rejected", "few_words") in before.values()
    dest = str(tmp_path / "ungated")
    assert main(["refilter", str(tmp_path / "gated"), dest, "--set", "filters.custom=[]", "--no-progress"]) == 0
    assert _routing(dest) == _routing(str(runs / "a"))

    def clips(uri):
        return {r["id"]: r["audio"]["bytes"] for r in pq.read_table(f"{uri}/curated").to_pylist()}

    assert clips(dest) == clips(str(runs / "a"))


# A segmented OUTPUT (`--profile longform`): Whisper tiny.en transcribes each segment (the
# `none` backend reads one transcript per recording), no judge, no DNSMOS; the segment stage's
# duration gate is the one refiltered.
LONGFORM = ["judge.backend=none", "ray.progress=false", "ray.probe_engines=false", "filters.dnsmos.enabled=false",
            "segment.max_s=8", "output.rows_per_shard=2", *QUICK_MODELS]


@pytest.fixture(scope="module")
def longform_runs(tmp_path_factory, ray_local):
    """Three recordings (two spoken, one silent) cut into segments at the default gates (`a`)
    and, fresh, with the segment duration gate at the curated segments' median (`b`)."""
    from audiocurate.audio import encode_flac
    from test_segments import SENTENCES, recording

    root = tmp_path_factory.mktemp("refilter_longform")
    rows = [{"id": f"talk{k}.flac", "audio_bytes": encode_flac(recording(SENTENCES[3 * k:3 * k + 4])[0]),
             "speaker": f"s{k}"} for k in range(2)]
    rows.append({"id": "quiet.flac", "audio_bytes": encode_flac(np.zeros(4 * 16000, np.int16)), "speaker": "s2"})
    pq.write_table(pa.Table.from_pylist(rows), root / "in.parquet")
    quiet = {"echo": lambda s: None}
    base = run(PipelineConfig.load(profile="longform", overrides=LONGFORM), str(root / "in.parquet"),
               str(root / "a"), **quiet)
    durations = sorted(pq.read_table(str(root / "a" / "curated"), columns=["duration_s"])["duration_s"].to_pylist())
    stricter = f"filters.duration.min_s={round(durations[len(durations) // 2], 2)}"
    fresh = run(PipelineConfig.load(profile="longform", overrides=[*LONGFORM, stricter]), str(root / "in.parquet"),
                str(root / "b"), **quiet)
    assert base["accounting"]["ok"] and fresh["accounting"]["ok"] and base["accounting"]["recordings"] == 3
    return root, stricter


@pytest.mark.slow
def test_refilter_of_segments_routes_as_a_fresh_run_accounted_per_recording(longform_runs):
    """Each stored segment lands once in DEST, routed as a fresh longform run at the stricter
    gate routes it; DEST counts OUTPUT's recordings; a rerun changes nothing; a DEST that
    lost a shard mid-recording is completed exactly."""
    root, stricter = longform_runs
    dest = str(root / "a_to_b")
    assert main(["refilter", str(root / "a"), dest, "--set", stricter, "--no-progress"]) == 0
    routed, fresh, before = _routing(dest), _routing(str(root / "b")), _routing(str(root / "a"))
    assert routed == fresh and set(routed) == set(before)
    moved = [i for i in routed if routed[i] != before[i]]
    assert moved and all(routed[i] == ("rejected", "too_short") for i in moved), "the stricter gate moved nothing"
    report = json.loads((root / "a_to_b" / "report.json").read_text())
    assert report["accounting"]["ok"] and report["accounting"]["recordings"] == 3
    assert report["accounting"]["accounted"] == len(before) > 3
    segments = {r["id"]: r for r in pq.read_table(str(root / "a_to_b" / "curated")).to_pylist()}
    assert segments and all(r["audio"]["bytes"] and "@" in r["id"] and r["parent_id"] for r in segments.values())

    assert main(["refilter", str(root / "a"), dest, "--set", stricter, "--no-progress"]) == 0
    assert _routing(dest) == routed
    # Killed with one of a recording's segments not yet written: only that one is routed again
    shard = next(p for p in sorted((root / "a_to_b").glob("*/*.parquet"))
                 if max(pq.read_table(p, columns=["segments"])["segments"].to_pylist()) > 1)
    written = pq.read_table(shard)
    lost = next(i for i, n in enumerate(written["segments"].to_pylist()) if n > 1)
    pq.write_table(written.take([i for i in range(written.num_rows) if i != lost]), shard)
    (root / "a_to_b" / "_SUCCESS").unlink()
    assert main(["refilter", str(root / "a"), dest, "--set", stricter, "--no-progress"]) == 0
    assert _routing(dest) == routed and (root / "a_to_b" / "_SUCCESS").exists()
    assert json.loads((root / "a_to_b" / "report.json").read_text())["accounting"]["ok"]


@pytest.mark.slow
def test_a_segment_curated_anew_gets_its_clip_cut_from_its_recording(longform_runs):
    """A gate after Whisper rejected some segments; refiltered without it, they are curated as
    in the run without it, each with its own clip: its recording in OUTPUT's input, cut at its
    times (the same samples the run cut)."""
    root, _ = longform_runs
    few_words = {**dict(o.split("=", 1) for o in LONGFORM), "asr.language_id_model": None,
                 "filters.custom": [{"type": f"{__name__}:FewWords", "args": {"min_words": 12}}]}
    gated = run(PipelineConfig.load(profile="longform", overrides=few_words), str(root / "in.parquet"),
                str(root / "gated"), echo=lambda s: None)
    assert gated["accounting"]["ok"] and ("rejected", "few_words") in _routing(str(root / "gated")).values()
    dest = str(root / "ungated")
    assert main(["refilter", str(root / "gated"), dest, "--set", "filters.custom=[]", "--no-progress"]) == 0
    assert _routing(dest) == _routing(str(root / "a"))

    def samples(uri):
        return {r["id"]: sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="int16")[0]
                for r in pq.read_table(f"{uri}/curated").to_pylist()}

    got, want = samples(dest), samples(str(root / "a"))
    assert got.keys() == want.keys()
    assert all(len(got[i]) == len(want[i]) and np.abs(got[i].astype(int) - want[i]).max() <= 1 for i in got)


def test_refilter_refuses_to_cut_recordings_anew(longform_runs, capsys):
    root, _ = longform_runs
    dest = root / "recut"
    assert main(["refilter", str(root / "a"), str(dest), "--set", "segment.max_s=12"]) == 2
    err = capsys.readouterr().err
    assert "segment.max_s: 8.0 -> 12.0" in err and not dest.exists()
