"""The run's report: summary, report.json and a self-contained report.html that renders with its
plots in a real browser (headless Chromium), rebuilt by `audiocurate report OUTPUT`."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiocurate import contract as C
from audiocurate.config import PipelineConfig
from audiocurate.pipeline import run
from audiocurate.report import format_summary

from conftest import QUICK_MODELS, speak


@pytest.fixture(scope="module")
def output(tmp_path_factory, ray_local):
    d = tmp_path_factory.mktemp("report")
    # A line tiny.en hears well, so the judge keeps it whatever its prompt: the report needs a curated clip.
    # (The volcano line this had became "now we'll farm where magmarizes…", which sits at the threshold.)
    edu = "The Earth orbits the Sun once every year."
    rows = [
        {"id": "edu", "audio_bytes": speak(edu, fmt="flac"), "sentence": edu},
        {"id": "chat", "audio_bytes": speak("Hey, want to grab a coffee later?", fmt="flac"),
         "sentence": "Hey, want to grab a coffee later?"},
        {"id": "bad", "audio_bytes": b"\x00" * 100, "sentence": ""},
    ]
    pq.write_table(pa.Table.from_pylist(rows), d / "in.parquet")
    report = run(PipelineConfig.load(overrides=["ray.progress=false", *QUICK_MODELS]), str(d / "in.parquet"), str(d / "out"),
                 echo=lambda s: None)
    return d / "out", report


def test_summary_names_every_count(output):
    _, report = output
    text = format_summary(report)
    for needle in ("input rows", "curated", "rejected", "errors", "accounting      OK", "throughput",
                   "audio-hours per hour", "stage busy time", "WER"):
        assert needle in text, needle
    assert re.search(r"decode +3 in: 2 passed, 1 errors", text), text


def test_stage_counts_chain_from_input_to_curated(output):
    """Each stage passes on exactly what the next one takes in, and the last passes the
    curated rows: the per-stage counts account for every row."""
    _, report = output
    st = report["stages"]
    assert list(st) == ["decode", "transcribe", "judge", "select"]
    assert st["decode"]["rows_in"] == report["accounting"]["input"] == 3
    for before, after in (("decode", "transcribe"), ("transcribe", "judge"), ("judge", "select")):
        assert st[before]["passed"] == st[after]["rows_in"], (before, after, st)
    assert st["select"]["passed"] == report["accounting"]["curated"]
    dropped = sum(sum(c["dropped"].values()) for c in st.values())
    assert dropped == report["accounting"]["rejected"]
    assert sum(c["errors"] for c in st.values()) == report["accounting"]["errors"] == 1


def test_report_command_rebuilds_the_same_counts(output):
    out, report = output
    (out / "report.html").unlink()
    res = subprocess.run([sys.executable, "-m", "audiocurate.cli", "report", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rebuilt = json.loads((out / "report.json").read_text())
    assert rebuilt["accounting"] == report["accounting"] and (out / "report.html").exists()
    assert rebuilt["samples"] == json.loads(json.dumps(report["samples"])), "the same sample rows on every rebuild"
    assert set(rebuilt["samples"]) == {"curated", "rejected: low_edu_score", "error: decode"}


def test_report_html_renders_with_its_plots_in_chromium(output, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (make sysdeps)")
    out, _ = output
    shot = tmp_path / "shot.png"
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<table id=\"summary\">" in dom.stdout.replace("'", '"')
    assert dom.stdout.count("data:image/png;base64,") >= 4 and "<table id=\"stages\">" in dom.stdout.replace("'", "\"")
    # The players: the curated clip and the rejected one (read back from the input) decode in the
    # browser; the corrupt row has none. The page's own script records each clip's duration.
    played = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    durations = [float(d) for d in re.findall(r'<audio[^>]*data-duration="([0-9.]+)"', played)]
    # every player decodes: two samples (curated, rejected), the judge score's margin (one clip
    # kept, one dropped), and the margins of the other gates that have clips near their threshold
    assert len(durations) == played.count("<audio") >= 4 and all(d > 1.0 for d in durations), durations
    samples = played[played.index("Listen: samples per outcome"):]
    assert samples.count("<audio") == 2, "the curated and the rejected sample; the corrupt row has none"
    whatif = played[played.index('id="gate-edu_score"'):].split("</section>")[0]
    assert whatif.count("<audio") == 2 and 'alt="what-if: edu_score"' in whatif
    assert "data-error" not in played
    assert (out / "report.html").stat().st_size < 2_000_000
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars", (out / "report.html").as_uri()],
        capture_output=True, timeout=120, check=True)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The plots' bar colours (green = kept scores, blue = stage time) must be on screen.
    green = np.sum((abs(img[..., 0] - 0x44) < 12) & (abs(img[..., 1] - 0xAA) < 12) & (abs(img[..., 2] - 0x44) < 12))
    blue = np.sum((abs(img[..., 0] - 0x44) < 12) & (abs(img[..., 1] - 0x88) < 12) & (abs(img[..., 2] - 0xCC) < 12))
    assert green > 200 and blue > 200, (green, blue)


def test_curated_audio_is_found_in_any_row_group_by_its_id_column(tmp_path):
    """The players' clips come from a compacted shard read 256 rows at a time, whatever the
    column order; ids it does not hold are simply absent."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from audiocurate.report_audio import curated_audio

    rows = [{"audio": {"bytes": bytes([i % 256]) * 10, "path": None}, "clip": f"c{i}"} for i in range(1000)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part.parquet", row_group_size=100)
    got = curated_audio(pafs.LocalFileSystem(), str(tmp_path / "part.parquet"), ["c3", "c999", "c500", "gone"], "clip")
    assert got == {"c3": bytes([3]) * 10, "c500": bytes([500 % 256]) * 10, "c999": bytes([999 % 256]) * 10}


@pytest.mark.parametrize("segmented", [False, True])
def test_accounting_counts_duplicate_ids_and_distinct_input_rows(tmp_path, segmented):
    """Every output row's id is checked against every other's, across splits; the input rows in
    scope are the distinct parents (recordings, when segmenting) or the rows themselves."""
    from audiocurate.report import build_report
    from audiocurate.sinks import OutputDir

    def part(split, rows):
        (tmp_path / split).mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / split / "part-0.parquet")

    if segmented:  # r1 cut in two kept segments and a rejected one, r2 in one, r3 failed whole
        part("curated", [{"id": "r1-0", "parent_id": "r1"}, {"id": "r1-1", "parent_id": "r1"},
                         {"id": "r2-0", "parent_id": "r2"}])
        part("rejected", [{"id": "r1-2", "parent_id": "r1", C.DROP_REASON: "silence"}])
        part("errors", [{"id": "r3", C.ERROR_STAGE: "decode", C.ERROR: "corrupt"}])
        expected = (0, 3)
    else:  # "b" written twice: once curated, once rejected
        part("curated", [{"id": "a"}, {"id": "b"}])
        part("rejected", [{"id": "b", C.DROP_REASON: "silence"}, {"id": "c", C.DROP_REASON: "silence"}])
        expected = (1, 3)
    config = PipelineConfig.load(overrides=[f"segment.enabled={str(segmented).lower()}"])
    acc = build_report(OutputDir(str(tmp_path)), config, input_rows=3)["accounting"]
    assert (acc["duplicates"], acc["in_scope"]) == expected
    assert acc["ok"] == segmented
    acc = build_report(OutputDir(str(tmp_path)), config, input_rows=1, keep_ids=["r1" if segmented else "c"])["accounting"]
    assert acc["in_scope"] == 1


def test_sample_picker_keeps_the_lowest_ranked_ids_however_the_rows_come():
    """Per outcome, the k ids of lowest rank over every shard, whatever the shards' order and
    size; a row's fields are built only for rows that can be kept (at most k per offer)."""
    from audiocurate.report_audio import SamplePicker, stable_ranks

    ids = [f"clip-{i}" for i in range(500)]
    outcomes = np.array(["curated" if i % 3 else "rejected: silence" for i in range(500)])
    ranks = stable_ranks(ids)
    want = {o: sorted((i for i in range(500) if outcomes[i] == o), key=lambda i: ranks[i])[:4] for o in set(outcomes)}
    for order, size in ((np.arange(500), 500), (np.random.default_rng(1).permutation(500), 37)):
        picker, built = SamplePicker(4), []
        for lo in range(0, 500, size):
            chunk = order[lo:lo + size]
            chunk_ids = [ids[i] for i in chunk]
            for o in dict.fromkeys(outcomes[chunk]):
                rows = np.flatnonzero(outcomes[chunk] == o)
                before = len(built)
                picker.offer(o, chunk_ids, stable_ranks(chunk_ids), rows,
                             lambda i, c=chunk_ids: built.append(c[i]) or {"id": c[i]}, "part")
                assert len(built) - before <= 4
        got = {o: [cid for cid, _, _ in rows] for o, rows in picker.picked().items()}
        assert got == {o: [ids[i] for i in v] for o, v in want.items()}
    assert stable_ranks(["a", "b"]).tolist() == [3904355907, 1908338681]  # CRC-32: the same in any process


def test_drops_are_counted_where_each_row_stopped_and_errors_by_stage(tmp_path):
    """A rejected row is dropped at decode (no transcript), at transcribe (transcribed, not
    judged) or at select (judged); nulls count as an outcome of their own, in two shards whose
    reasons come in different orders; the samples are offered by the same outcomes."""
    from audiocurate.report import build_report
    from audiocurate.sinks import OutputDir

    def part(split, name, rows):
        (tmp_path / split).mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / split / f"{name}.parquet")

    def rejected(i, reason, asr=None, judge=None):
        return {"id": f"r{i}", C.DROP_REASON: reason, "asr_s": asr, "judge_s": judge}

    part("rejected", "part-0", [rejected(0, "silence"), rejected(1, None), rejected(2, "low_edu_score", 0.1, 0.1),
                                rejected(3, "no_words", 0.1), rejected(4, "silence")])
    part("rejected", "part-1", [rejected(5, "low_edu_score", 0.1, 0.2), rejected(6, None), rejected(7, "no_words", 0.1),
                                rejected(8, "silence")])
    part("errors", "part-0", [{"id": "e0", C.ERROR_STAGE: "judge", C.ERROR: "engine died"},
                              {"id": "e1", C.ERROR_STAGE: "decode", C.ERROR: "corrupt"},
                              {"id": "e2", C.ERROR_STAGE: None, C.ERROR: "?"},
                              {"id": "e3", C.ERROR_STAGE: "decode", C.ERROR: "corrupt"}])
    report = build_report(OutputDir(str(tmp_path)), PipelineConfig.load(overrides=[]), input_rows=13)
    assert list(report["drop_reasons"].items()) == [("silence", 3), (None, 2), ("low_edu_score", 2), ("no_words", 2)]
    assert list(report["error_stages"].items()) == [("decode", 2), ("judge", 1), (None, 1)]
    stages = report["stages"]
    assert stages["decode"]["dropped"] == {"silence": 3, None: 2} and stages["decode"]["errors"] == 2
    assert stages["transcribe"]["dropped"] == {"no_words": 2}
    assert stages["select"]["dropped"] == {"low_edu_score": 2}
    assert set(report["samples"]) == {"rejected: silence", "rejected: None", "rejected: low_edu_score",
                                      "rejected: no_words", "error: judge", "error: decode", "error: None"}
    assert report["accounting"]["rejected"] == 9 and report["accounting"]["errors"] == 4


def test_dollar_signs_in_plotted_values_are_drawn_literally(tmp_path):
    """Values from the input (an `accent` of `$x_{1$`, which matplotlib's mathtext cannot
    parse, or `$x$`, which it would set as an italic x) are drawn as written: report.html is
    written, and the figures the report draws hold the literal strings (rendered to SVG with
    text kept as text), without touching matplotlib's process-wide settings."""
    import matplotlib

    from audiocurate.report import build_report, write_report
    from audiocurate.report.figures import draw_figures
    from audiocurate.sinks import OutputDir

    hostile = ["$x_{1$", "$x$", r"\$5 $\alpha$"]
    (tmp_path / "curated").mkdir()
    (tmp_path / "rejected").mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": f"c{i}", "edu_score": 3 + i % 3, "edu_score_mean": 3.5, "duration_s": 2.0, "accent": a}
                                         for i, a in enumerate(hostile * 2)]), tmp_path / "curated" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": "r0", C.DROP_REASON: "$drop_{reason", "edu_score": 1, "edu_score_mean": 1.2,
                                          "accent": "$"}]),
                   tmp_path / "rejected" / "part-0.parquet")
    out = OutputDir(str(tmp_path))
    config = PipelineConfig.load(overrides=[])
    before = dict(matplotlib.rcParams)
    report = build_report(out, config, input_rows=7)
    write_report(out, report, config)
    assert dict(matplotlib.rcParams) == before
    page = (tmp_path / "report.html").read_text()
    assert "alt='Scores by accent'" in page and page.count("data:image/png;base64,") >= 5

    figures = dict(draw_figures(report))
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # the test's own setting: SVG text as <text>
        svg = {}
        for name, fig in figures.items():
            buf = io.BytesIO()
            fig.savefig(buf, format="svg")
            svg[name] = buf.getvalue().decode()
    for value in hostile + ["$"]:
        assert f">{html.escape(value, quote=False)}<" in svg["Scores by accent"], value
    assert ">drop: $drop_{reason<" in svg["Drop reasons"]
