"""`audiocurate refilter`: OUTPUT's stored rows routed under new gates, with no model, give
what a fresh run under those gates gives, into a normal, exact, resumable output."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiocurate.cli import main
from audiocurate.config import PipelineConfig
from audiocurate.filters import Filter
from audiocurate.pipeline import run
from audiocurate.sinks import SPLITS, OutputDir

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
