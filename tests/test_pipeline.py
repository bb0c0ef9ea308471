"""The demo dataset end to end on a real local Ray with the real embedded models."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from audiocurate.filters import corpus_wer
from audiocurate.pipeline import run

from conftest import QUICK_MODELS

SPLITS = ("curated", "rejected", "errors")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_local, demo_parquet):
    from audiocurate.config import PipelineConfig

    out = tmp_path_factory.mktemp("demo") / "out"
    config = PipelineConfig.load(overrides=["ray.progress=false"])
    report = run(config, demo_parquet, str(out), echo=lambda s: None)
    tables = {s: pq.read_table(out / s) for s in SPLITS if (out / s).exists()}
    return report, tables, out, pq.read_table(demo_parquet)


def test_every_input_row_lands_in_exactly_one_output(demo_run):
    report, tables, out, source = demo_run
    ids = [i for t in tables.values() for i in t["id"].to_pylist()]
    assert sorted(ids) == sorted(source["id"].to_pylist())
    acc = report["accounting"]
    assert acc["ok"] and acc["duplicates"] == 0
    assert acc["input"] == source.num_rows == acc["curated"] + acc["rejected"] + acc["errors"]
    assert json.loads((out / "report.json").read_text())["accounting"] == acc
    assert (out / "_SUCCESS").exists() and (out / "report.html").exists()


def test_transcripts_match_the_speech(demo_run):
    _, tables, _, _ = demo_run
    rows = [r for s in ("curated", "rejected") for r in tables[s].to_pylist() if r["transcript"]]
    assert len(rows) >= 30
    wer = corpus_wer([r["sentence"] for r in rows], [r["transcript"] for r in rows], "whisper_english")
    assert wer < 0.35, wer  # tiny.en on eight espeak-ng voices, some of them heavily accented
    assert all(r["wer"] is not None for r in rows)


def test_scores_are_on_the_scale_and_select_educational_speech(demo_run):
    _, tables, _, _ = demo_run
    judged = [r for s in ("curated", "rejected") for r in tables[s].to_pylist() if r["edu_score"] is not None]
    assert all(r["edu_score"] in {1, 2, 3, 4, 5} and 1 <= r["edu_score_mean"] <= 5 for r in judged)
    assert all(abs(sum(r["edu_probs"]) - 1) < 1e-3 for r in judged)
    curated = tables["curated"].to_pylist()
    assert curated and all(r["edu_score"] >= 3 for r in curated)
    edu = [r for r in judged if r["demo_label"] == "educational"]
    non = [r for r in judged if r["demo_label"] == "not_educational"]
    kept_edu = sum(r["edu_score"] >= 3 for r in edu) / len(edu)
    kept_non = sum(r["edu_score"] >= 3 for r in non) / len(non)
    assert kept_edu >= 0.6 and kept_non <= 0.3, (kept_edu, kept_non)


def test_curated_audio_is_16k_flac_that_decodes(demo_run):
    _, tables, _, source = demo_run
    original = {r["id"]: r for r in source.select(["id", "sentence", "client_id", "up_votes"]).to_pylist()}
    for row in tables["curated"].to_pylist():
        audio, sr = sf.read(io.BytesIO(row["audio"]["bytes"]))
        assert sr == 16000 and audio.ndim == 1
        assert abs(len(audio) / sr - row["duration_s"]) < 0.01
        assert row["audio"]["path"].endswith(".flac")
        for col in ("sentence", "client_id", "up_votes"):  # carried unchanged
            assert row[col] == original[row["id"]][col]
    assert "audio_bytes" not in tables["curated"].column_names
    assert "audio" not in tables["rejected"].column_names and "audio_bytes" not in tables["rejected"].column_names


def test_broken_rows_are_errors_with_reasons(demo_run):
    report, tables, _, _ = demo_run
    errors = {r["id"]: r for r in tables["errors"].to_pylist()}
    broken = {r["id"]: r["demo_label"] for r in tables["errors"].to_pylist()}
    assert set(broken.values()) == {"broken: truncated FLAC", "broken: random bytes", "broken: empty"}
    for r in errors.values():
        assert r["error_stage"] == "decode" and len(r["error"]) > 5
    assert any("empty input" in r["error"] for r in errors.values())
    assert report["error_stages"] == {"decode": 3}
    silence = [r for r in tables["rejected"].to_pylist() if r["demo_label"] == "silence"]
    assert silence and silence[0]["drop_reason"] == "silence"


def test_rerun_resumes_with_nothing_to_do(demo_run, demo_parquet):
    from audiocurate.config import PipelineConfig

    _, tables, out, _ = demo_run
    before = {s: sorted(t["id"].to_pylist()) for s, t in tables.items()}
    report = run(PipelineConfig.load(overrides=["ray.progress=false"]), demo_parquet, str(out), echo=lambda s: None)
    after = {s: sorted(pq.read_table(out / s)["id"].to_pylist()) for s in SPLITS}
    assert before == after and report["accounting"]["ok"] and report["timing"]["attempts"] == 2


def test_changed_configuration_is_refused(demo_run, demo_parquet):
    from audiocurate.config import PipelineConfig
    from audiocurate.run_state import OutputExistsError

    _, _, out, _ = demo_run
    with pytest.raises(OutputExistsError, match="select.min_score"):
        run(PipelineConfig.load(overrides=["select.min_score=4", "ray.progress=false"]), demo_parquet, str(out),
            echo=lambda s: None)


def test_report_html_has_plots_and_samples(demo_run):
    _, _, out, _ = demo_run
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    for outcome in ("curated", "rejected: low_edu_score", "rejected: silence", "error: decode"):
        assert f"<h3>{outcome}</h3>" in html, outcome
    assert html.count("<audio ") >= 7  # 3 curated, 3 low score, the silent one; corrupt rows have none


def test_readme_demo_figures_are_what_the_pinned_install_curates(demo_run):
    """The README promises what `make demo` prints; the pinned engines must deliver exactly that."""
    import re
    from pathlib import Path

    report, _, _, source = demo_run
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"(\d+) sample clips: \*\*(\d+) curated, (\d+) rejected, (\d+) errors\*\*", readme)
    assert found, "README.md lost its demo figures line"
    promised = tuple(int(x) for x in found.groups())
    acc = report["accounting"]
    assert promised == (source.num_rows, acc["curated"], acc["rejected"], acc["errors"])


def test_resuming_across_an_engine_upgrade_is_refused(demo_run, demo_parquet):
    """An output made by another llama.cpp is not resumed: scores would mix two engines."""
    from audiocurate.config import PipelineConfig
    from audiocurate.run_state import OutputExistsError
    from audiocurate.sinks import OutputDir

    report, _, out, _ = demo_run
    installed = report["engines"]["llama-cpp-python"]
    assert installed and report["engines"]["faster-whisper"] and report["engines"]["ctranslate2"]
    state = OutputDir(str(out))
    identity = state.state.identity()
    original = json.loads(json.dumps(identity))
    identity["engines"]["llama-cpp-python"] = "0.2.90"
    state.write_json("_state/run.json", identity)
    try:
        with pytest.raises(OutputExistsError, match=rf"engines.llama-cpp-python: '0.2.90' before, '{installed}' now"):
            run(PipelineConfig.load(overrides=["ray.progress=false"]), demo_parquet, str(out), echo=lambda s: None)
    finally:
        state.write_json("_state/run.json", original)


def test_every_shard_of_an_output_has_one_schema(demo_run):
    """Rows rejected while decoding (the silent clip) are written early, the rest at the end:
    readers of the folder must still see one schema."""
    _, tables, out, _ = demo_run
    reasons = set(tables["rejected"]["drop_reason"].to_pylist())
    assert {"silence", "low_edu_score"} <= reasons  # both paths are in this output
    for split in SPLITS:
        schemas = {pq.read_schema(p).remove_metadata() for p in (out / split).glob("*.parquet")}
        assert len(schemas) == 1, (split, schemas)


def test_a_run_leaves_the_callers_ray_data_context_alone(demo_run):
    """Library code: the run's Ray Data settings (here `ray.progress=false`) live on its own
    Dataset's context, not on the caller's global one."""
    import ray

    assert ray.data.DataContext.get_current().enable_progress_bars is True


def test_a_custom_filter_module_runs_on_ray_workers_that_cannot_import_it(tmp_path, monkeypatch, ray_local,
                                                                          demo_parquet):
    """docs/extending.md's filter example, end to end: a filter in a module only the driver can
    import rejects rows right after Whisper, so they never reach the judge."""
    import textwrap

    import ray

    from audiocurate.config import PipelineConfig

    (tmp_path / "my_filters_e2e.py").write_text(textwrap.dedent('''
        from audiocurate.filters import Filter

        class HasWord(Filter):
            needs = ("transcript",)

            def __init__(self, word):
                self.word = word

            def reason(self, row):
                words = (row["transcript"] or "").lower().replace(",", " ").replace(".", " ").split()
                return "says_" + self.word if self.word in words else None
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))

    @ray.remote(num_cpus=0)
    def importable() -> bool:
        import importlib.util

        return importlib.util.find_spec("my_filters_e2e") is not None

    assert not ray.get(importable.remote()), "the workers must not see the module for this test to mean anything"
    config = PipelineConfig.load(overrides=["ray.progress=false", *QUICK_MODELS,
                                            'filters.custom=[{type: "my_filters_e2e:HasWord", args: {word: the}}]'])
    out = tmp_path / "out"
    report = run(config, demo_parquet, str(out), limit=12, echo=lambda s: None)
    assert report["accounting"]["ok"]
    rejected = pq.read_table(out / "rejected").to_pylist()
    hits = [r for r in rejected if r["drop_reason"] == "says_the"]
    assert hits, "the demo's transcripts say 'the'; the filter rejected none"
    assert all(r["judge_s"] is None and r["edu_score"] is None for r in hits), "rejected rows reached the judge"
    curated = pq.read_table(out / "curated", columns=["transcript"])["transcript"].to_pylist()
    assert not any("the" in t.lower().replace(",", " ").replace(".", " ").split() for t in curated)
    assert report["drop_reasons"]["says_the"] == len(hits)


def test_transcribe_only_run_keeps_every_row_the_filters_pass(demo_run, demo_parquet, tmp_path):
    """`judge.backend: none`: no judge actor, no scores; the rows the default run rejected only
    for their score are kept, everything else lands where it did."""
    from audiocurate.config import PipelineConfig

    report0, tables0, _, _ = demo_run
    config = PipelineConfig.load(overrides={"ray.progress": False, "judge.backend": "none"})
    out = tmp_path / "out"
    report = run(config, demo_parquet, str(out), limit=16, echo=lambda s: None)  # the same rows every time
    outcome = {r["id"]: (s, r) for s in SPLITS if (out / s).exists() for r in pq.read_table(out / s).to_pylist()}
    assert report["accounting"]["ok"] and report["accounting"]["input"] == len(outcome) == 16
    before = {r["id"]: (s, r) for s, t in tables0.items() for r in t.to_pylist() if r["id"] in outcome}
    assert before.keys() == outcome.keys()
    low = {i for i, (s, r) in before.items() if r.get("drop_reason") == "low_edu_score"}
    assert low, "the default run must reject some of these rows for their score for this test to mean anything"
    curated = [r for s, r in outcome.values() if s == "curated"]
    assert {r["id"] for r in curated} == {i for i, (s, _) in before.items() if s == "curated"} | low
    assert all(r["edu_score"] is None and r["edu_score_mean"] is None and r["judge_model"] == "none" for r in curated)
    assert "low_edu_score" not in report["drop_reasons"]
    assert {i for i, (s, _) in outcome.items() if s == "errors"} == {i for i, (s, _) in before.items() if s == "errors"}
    assert all(r["transcript"] == before[r["id"]][1]["transcript"] for r in curated)
    assert report["stages"]["judge"]["rows_in"] == sum(r.get("judge_s") is not None or r.get("judge_model") is not None
                                                      for _, r in before.values())


def test_judge_only_run_scores_the_inputs_own_transcripts(demo_run, demo_parquet, tmp_path):
    """`asr.backend: none` + `asr.text_column`: no Whisper; each row's `sentence` is judged, with
    the same accounting, and a rerun resumes with nothing to do."""
    from audiocurate.config import PipelineConfig

    report0, tables0, _, source = demo_run
    config = PipelineConfig.load(overrides={"ray.progress": False, "asr.backend": "none",
                                            "asr.text_column": "sentence"})
    out = tmp_path / "out"
    report = run(config, demo_parquet, str(out), echo=lambda s: None)
    assert report["accounting"]["ok"]
    sentence = dict(zip(source["id"].to_pylist(), source["sentence"].to_pylist()))
    judged = [r for s in ("curated", "rejected") if (out / s).exists()
              for r in pq.read_table(out / s).to_pylist() if r["judge_model"]]
    assert judged and all(r["transcript"] == sentence[r["id"]] and r["asr_model"] == "column:sentence"
                          and r["avg_logprob"] is None for r in judged)
    assert all(r["edu_score"] in {1, 2, 3, 4, 5} for r in judged)
    # the sentences are the demo's labelled texts: educational ones score higher
    label = dict(zip(source["id"].to_pylist(), source["demo_label"].to_pylist()))
    edu = [r["edu_score_mean"] for r in judged if label[r["id"]] == "educational"]
    non = [r["edu_score_mean"] for r in judged if label[r["id"]] != "educational"]
    assert np.mean(edu) > np.mean(non)
    # decode errors stay errors: the audio is still decoded (curated rows carry it)
    assert report["accounting"]["errors"] == report0["accounting"]["errors"]
    again = run(config, demo_parquet, str(out), echo=lambda s: None)
    assert again["accounting"] == report["accounting"]

    bad = PipelineConfig.load(overrides={"ray.progress": False, "asr.backend": "none", "asr.text_column": "nope"})
    with pytest.raises(ValueError, match="asr.text_column 'nope' is not a column of the input"):
        run(bad, demo_parquet, str(tmp_path / "bad"), echo=lambda s: None)
    segmenting = PipelineConfig.load(profile="longform", overrides={"ray.progress": False, "asr.backend": "none",
                                                                    "asr.text_column": "sentence"})
    with pytest.raises(ValueError, match="cannot transcribe the segments"):
        run(segmenting, demo_parquet, str(tmp_path / "seg"), echo=lambda s: None)
