"""The judge's dev set and its figures (benchmarks/judge_eval.py): labelled by source, balanced by
length, a held-out half fixed by each text, no prompt example inside it, metrics that are right."""

from __future__ import annotations

import collections
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import judge_eval  # noqa: E402

from audiocurate.judge import load_judge_profile  # noqa: E402

needs_debian_texts = pytest.mark.skipif(
    not all(p.exists() for p in (judge_eval.FORTUNES / "de", judge_eval.DEBIAN_REFERENCE, judge_eval.WORDNET_NOUNS,
                                 judge_eval.FOLDOC)),
    reason=f"the dev set's Debian texts are missing: apt-get install {judge_eval.APT_PACKAGES}")


@pytest.fixture(scope="module")
def items():
    return judge_eval.dev_set({"en": 6, "de": 3, "es": 3, "it": 3})


@needs_debian_texts
def test_each_language_label_and_length_bucket_is_filled_alike(items):
    cells = collections.Counter((it["language"], it["label"], it["bucket"], it["split"]) for it in items)
    assert len(cells) == 4 * 2 * 3 * 2
    assert {n for (lang, *_), n in cells.items() if lang == "en"} == {6}
    assert {n for (lang, *_), n in cells.items() if lang != "en"} == {3}
    for it in items:
        lo, hi = next((lo, hi) for name, lo, hi in judge_eval.BUCKETS if name == it["bucket"])
        assert lo <= len(it["text"]) < hi


@needs_debian_texts
def test_the_held_out_half_is_fixed_by_each_text(items):
    """A text is in `eval` or `fit` by its own hash, so no sample size moves it into calibration."""
    assert all(it["split"] == judge_eval.split_of(it["text"]) for it in items)
    fit = {it["text"] for it in items if it["split"] == "fit"}
    assert not fit & {it["text"] for it in items if it["split"] == "eval"}
    bigger = judge_eval.dev_set({"en": 10})
    assert all(it["split"] == judge_eval.split_of(it["text"]) for it in bigger)


@needs_debian_texts
def test_labels_come_from_the_source_and_left_out_fortune_files_stay_out(items):
    for it in items:
        if it["label"] == 1:
            assert it["source"].split("/")[0] in {"debian-reference", "wordnet", "foldoc"}
        else:
            assert it["source"].startswith("fortunes/")
            assert it["source"].split("/")[1] not in judge_eval.FORTUNE_FILES_LEFT_OUT
    assert {it["language"] for it in items} == {"en", "de", "es", "it"}


@needs_debian_texts
def test_no_prompt_example_is_in_the_dev_set():
    texts = {" ".join(it["text"].split()).lower() for it in judge_eval.dev_set({"en": 30, "de": 12, "es": 12, "it": 12})}
    folder = resources.files("audiocurate.judge") / "profiles"
    for ref in folder.iterdir():
        if ref.name.endswith(".yaml"):
            for example in load_judge_profile(ref.name[:-5]).examples:
                assert " ".join(example.text.split()).lower() not in texts, (ref.name, example.text)


def test_metrics_count_precision_and_recall_of_the_educational_class():
    labels = np.array([1, 1, 1, 0, 0, 0])
    means = np.array([4.0, 3.5, 1.2, 3.6, 1.1, 1.0])
    scores = np.array([4, 3, 1, 3, 1, 1])
    m = judge_eval.metrics(means, scores, labels)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["kept_fraction"] == pytest.approx(0.5)
    assert m["roc_auc"] == pytest.approx(7 / 9)  # 7 of the 9 (edu, other) pairs are ordered right
    # recall >= 0.75 needs all three educational rows: the lowest at 1.2 keeps 4 of 6 rows
    assert judge_eval.precision_at_recall(means, labels, 0.75) == pytest.approx(3 / 4)


def test_figures_are_given_per_language_and_bucket():
    items = [{"language": lang, "bucket": b, "label": lab} for lang in ("en", "de") for b in ("short", "long")
             for lab in (0, 1)]
    means = np.array([1.0, 4.0] * 4)
    out = judge_eval.report(items, means, np.round(means).astype(int), 3)
    assert out["all"]["roc_auc"] == 1.0 and out["all"]["n"] == 8
    assert out["language=de"]["n"] == 4 and out["bucket=short"]["n"] == 4
    assert out["language=en,bucket=long"]["precision"] == 1.0
    lo, hi = out["all"]["precision_ci95"]  # 4 of 4 kept rows are educational: sure of little with 4
    assert hi == 1.0 and 0.4 < lo < 0.6, (lo, hi)
    assert out["language=de"]["recall_ci95"][1] == 1.0 and out["language=de"]["recall_ci95"][0] < 0.4


def test_speech_figures_are_also_given_per_transcript_wer():
    """A judge miss on a garbled transcript is the ASR's as much as the judge's: the report splits them."""
    wers = [0.0, 0.1, 0.3, 0.3, 0.6, 1.2]
    items = [{"language": "en", "bucket": "short", "label": lab, "wer": w} for lab, w in zip((0, 1, 0, 1, 1, 0), wers)]
    means = np.array([1.0, 4.0, 1.0, 4.0, 1.0, 4.0])  # right on clean transcripts, wrong on garbled ones
    out = judge_eval.report(items, means, np.round(means).astype(int), 3)
    assert (out["wer<0.25"]["n"], out["wer 0.25-0.5"]["n"], out["wer>=0.5"]["n"]) == (2, 2, 2)
    assert out["wer<0.25"]["roc_auc"] == 1.0 and out["wer>=0.5"]["roc_auc"] == 0.0
    assert out["all"]["n"] == 6
    texts = [{k: v for k, v in it.items() if k != "wer"} for it in items]  # reference texts: no WER groups
    assert "wer<0.25" not in judge_eval.report(texts, means, np.round(means).astype(int), 3)


def test_the_cpu_is_named():
    assert "cores" in judge_eval.cpu_model()


@pytest.mark.slow  # a Ray Data processor and a model server: tens of seconds
def test_a_processor_judge_is_measured_through_the_runs_own_processor(llama_server, ray_local):
    """`--profile gpu` measures a vLLM judge the way a run uses it: through `ray.data.llm`. The
    same path with the HTTP processor and a local server gives the in-process judge's scores."""
    from audiocurate.config import PipelineConfig

    texts = ["The heart pumps blood through the arteries to every part of the body.",
             "lol that was so funny, we should totally do that again.", ""]
    # The server runs SmolLM2, so both sides take its profile (prompt and calibration map).
    config = PipelineConfig.load(overrides=["judge.backend=http", f"judge.url={llama_server}/v1/completions",
                                            "judge.max_retries=1", "judge.profile=smollm2-135m-edu"])
    remote, seconds = judge_eval.judge_texts(config, texts, ["English", None, None])
    local, _ = judge_eval.judge_texts(PipelineConfig.load(overrides=["judge.profile=smollm2-135m-edu"]), texts,
                                      ["English", None, None])
    assert seconds > 0
    for r, s in zip(remote, local):
        assert r.error is None and abs(r.mean - s.mean) < 0.2 and r.score in {1, 2, 3, 4, 5}
