"""Threshold what-ifs and the per-language table in the report: the hours a gate would keep at
each threshold, from the stored rows alone, equal a direct computation over the same rows; the
page shows each gate's plot with its threshold marked, in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from audiocurate import contract as C
from audiocurate.config import PipelineConfig
from audiocurate.report import build_report, format_summary, write_report
from audiocurate.report.whatif import MARGIN_CLIPS
from audiocurate.sinks import OutputDir

OVERRIDES = ["filters.language.allowed=[en, de]", "filters.language.min_prob=0.5", "asr.language=null",
             "filters.language.min_avg_logprob=-1.0"]
SCHEMA = pa.schema([("id", pa.string()), ("duration_s", pa.float32()), ("edu_score", pa.int8()),
                    ("wer", pa.float32()), ("language", pa.string()), ("language_prob", pa.float32()),
                    ("avg_logprob", pa.float32()), ("clip_fraction", pa.float32()), ("clip_longest_run", pa.int32()),
                    ("background_snr_db", pa.float32()), ("client_id", pa.string()), ("transcript", pa.string())])


def _wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def _route(r: dict, config: PipelineConfig) -> str | None:
    """The drop reason the run's filters give a row (the first failing gate, in run order)."""
    lang = config.filters.language
    f32 = lambda x: float(np.float32(x))  # noqa: E731 - what the row stores
    if r["language"] not in lang.allowed or r["language_prob"] is None or r["language_prob"] < lang.min_prob:
        return "language"
    if r["avg_logprob"] is not None and r["avg_logprob"] < lang.min_avg_logprob:
        return "low_confidence"
    if r["clip_fraction"] is not None and r["clip_fraction"] > f32(0.01) and r["clip_longest_run"] >= 3:
        return "clipped"
    if r["background_snr_db"] is not None and r["background_snr_db"] < 20:
        return "noisy_background"
    if r["wer"] is not None and r["wer"] > f32(0.8):
        return "wer_above_max"
    if r["edu_score"] is None or r["edu_score"] < config.select.min_score:
        return "low_edu_score"
    return None


def _rows(seed: int = 0, n: int = 600) -> list[dict]:
    rng = np.random.default_rng(seed)

    def maybe(x, p=0.05):
        return None if rng.random() < p else x

    rows = []
    for i in range(n):
        rows.append({
            "id": f"clip-{i}", "duration_s": float(np.float32(rng.uniform(0.5, 20))),
            "edu_score": maybe(int(rng.integers(1, 6))),
            "wer": maybe(float(np.float32(rng.gamma(1.0, 0.3)))),
            "language": maybe(str(rng.choice(["en", "en", "de", "fr"]))),
            "language_prob": maybe(float(np.float32(rng.uniform(0.2, 1.0)))),
            "avg_logprob": maybe(float(np.float32(-rng.gamma(2.0, 0.25)))),
            "clip_fraction": float(np.float32(rng.choice([0.0, rng.uniform(0, 0.05)]))),
            "clip_longest_run": int(rng.integers(0, 8)),
            "background_snr_db": maybe(float(np.float32(rng.normal(35, 12)))),
            "client_id": f"speaker-{int(rng.integers(0, 10))}", "transcript": "words",
        })
    # at the threshold exactly: WER 0.8 is not above 0.8, so the run kept it
    rows[0].update(wer=float(np.float32(0.8)), edu_score=5, language="en", language_prob=0.9, avg_logprob=-0.1,
                   clip_fraction=0.0, background_snr_db=40.0)
    return [{k: float(np.float32(v)) if isinstance(v, float) else v for k, v in r.items()} for r in rows]  # as stored


def _write(d, rows: list[dict], config: PipelineConfig, shards: int = 3, row_group_size: int = 50,
           audio: bool = False) -> OutputDir:
    split_rows = {"curated": [], "rejected": []}
    for r in rows:
        reason = _route(r, config)
        split_rows["rejected" if reason else "curated"].append({**r, C.DROP_REASON: reason} if reason else r)
    for split, rs in split_rows.items():
        (d / split).mkdir(parents=True, exist_ok=True)
        schema = SCHEMA.append(pa.field(C.DROP_REASON, pa.string())) if split == "rejected" else SCHEMA
        for k in range(shards):
            t = pa.Table.from_pylist(rs[k::shards], schema=schema)
            if audio and split == "curated":
                t = t.append_column("audio", pa.array([{"bytes": _wav(2.0), "path": None}] * t.num_rows))
            pq.write_table(t, d / split / f"part-{k}.parquet", row_group_size=row_group_size)
    return OutputDir(str(d))


@pytest.fixture(scope="module")
def config():
    return PipelineConfig.load(profile="quality", overrides=OVERRIDES + ["output.report_clips=3"])


@pytest.fixture(scope="module")
def built(tmp_path_factory, config):
    rows = _rows()
    out = _write(tmp_path_factory.mktemp("whatif"), rows, config, audio=True)
    return out, rows, build_report(out, config, input_rows=len(rows))


def _effective(r: dict, column: str):
    """The value a gate compares, straight from a row."""
    if column == "clip_fraction":
        return r["clip_fraction"] if r["clip_longest_run"] >= 3 else 0.0
    if column == "language_prob" and r["language"] not in ("en", "de"):
        return None  # rejected whatever the threshold
    return r[column]


def test_kept_hours_at_every_threshold_equal_a_direct_computation(built, config):
    """For each gate, at each threshold: the hours of the curated rows and of the rows it
    rejected itself whose value passes, summed row by row in Python over the same rows."""
    _, rows, report = built
    gates = {g["column"]: g for g in report["whatif"]}
    assert set(gates) == {"edu_score", "wer", "language_prob", "avg_logprob", "clip_fraction", "background_snr_db"}
    for column, g in gates.items():
        population = [r for r in rows if _route(r, config) in (None, g["drop_reason"])]
        assert g["population_rows"] == len(population)
        direct_hours, direct_rows = [], []
        for t in g["thresholds"]:
            kept = [r for r in population if (
                g["null_kept"] if _effective(r, column) is None
                else (_effective(r, column) >= t if g["kept_when"] == ">=" else _effective(r, column) <= t))]
            direct_hours.append(sum(r["duration_s"] for r in kept) / 3600)
            direct_rows.append(len(kept))
        assert g["kept_rows"] == direct_rows, column
        np.testing.assert_allclose(g["kept_hours"], direct_hours, rtol=0, atol=1e-9, err_msg=column)  # 3.6 us
        for entry in g["by_group"]["client_id"]:
            if entry["group"] == "(other)":
                continue
            t = g["thresholds"][len(g["thresholds"]) // 2]
            members = [r for r in population if r["client_id"] == entry["group"]]
            want = sum(r["duration_s"] for r in members if (
                g["null_kept"] if _effective(r, column) is None
                else (_effective(r, column) >= t if g["kept_when"] == ">=" else _effective(r, column) <= t))) / 3600
            assert entry["kept_hours"][len(g["thresholds"]) // 2] == pytest.approx(want, rel=0, abs=1e-9)


def test_the_current_threshold_gives_back_the_curated_hours(built):
    """Each gate replays the run: at its threshold it keeps exactly the curated rows, the row
    stored with WER 0.8 (float32) under `max_wer: 0.8` included."""
    _, rows, report = built
    curated_h = report["audio_hours"]["curated"]
    for g in report["whatif"]:
        assert g["replays_run"] is True, g["column"]
        assert g["kept_rows_now"] == report["accounting"]["curated"], g["column"]
        assert g["kept_hours_now"] == pytest.approx(curated_h, rel=1e-9)
    wer = next(g for g in report["whatif"] if g["column"] == "wer")
    assert float(np.float32(0.8)) in wer["thresholds"]


def test_strictest_threshold_for_a_share_of_the_hours(built):
    """`for_share`: the strictest threshold that keeps at least that share of the hours a gate
    decides; one step stricter keeps less."""
    _, _, report = built
    g = next(g for g in report["whatif"] if g["column"] == "wer")
    thresholds, kept = g["thresholds"], g["kept_hours"]
    for share, s in g["for_share"].items():
        j = thresholds.index(s["threshold"])
        assert kept[j] >= float(share) * g["population_hours"] - 1e-9  # report.json's hours: to 3.6 us
        assert j == 0 or kept[j - 1] < float(share) * g["population_hours"] + 1e-9


def test_margin_rows_are_the_nearest_on_each_side_whatever_the_shards(built, config, tmp_path):
    """The clips to listen to are the rows nearest the threshold that it keeps and that it
    drops, the same when the rows come in other shards and row groups."""
    _, rows, report = built
    g = next(g for g in report["whatif"] if g["column"] == "background_snr_db")
    population = [r for r in rows if _route(r, config) in (None, "noisy_background") and r["background_snr_db"] is not None]
    for side, keep in (("kept", True), ("dropped", False)):
        nearest = sorted((r for r in population if (r["background_snr_db"] >= 20) == keep),
                         key=lambda r: abs(r["background_snr_db"] - 20))[:MARGIN_CLIPS]
        assert [r["id"] for r in g["margin"][side]] == [r["id"] for r in nearest], side
    other = build_report(_write(tmp_path, rows[::-1], config, shards=5, row_group_size=17), config,
                         input_rows=len(rows))
    assert [g["margin"] for g in other["whatif"]] == [g["margin"] for g in report["whatif"]]
    assert [g["kept_rows"] for g in other["whatif"]] == [g["kept_rows"] for g in report["whatif"]]


def test_hours_and_counts_per_language_curated_and_rejected(built, config):
    _, rows, report = built
    got = {e["language"]: e for e in report["languages"]}
    assert set(got) == {"en", "de", "fr", "(none)"}
    for language, e in got.items():
        mine = [r for r in rows if (r["language"] or "(none)") == language]
        curated = [r for r in mine if _route(r, config) is None]
        assert (e["curated"], e["rejected"], e["errors"]) == (len(curated), len(mine) - len(curated), 0)
        assert e["curated_hours"] == pytest.approx(sum(r["duration_s"] for r in curated) / 3600, rel=1e-9)
        assert e["rejected_hours"] == pytest.approx(sum(r["duration_s"] for r in mine if r not in curated) / 3600,
                                                    rel=1e-9)
    assert got["fr"]["curated"] == 0 and got["fr"]["rejected"] > 0  # not allowed: every French clip rejected
    hours = [e["curated_hours"] for e in report["languages"]]
    assert hours == sorted(hours, reverse=True)
    assert f"fr 0 kept / {got['fr']['rejected']} rejected" in format_summary(report)


def test_a_gate_whose_column_is_never_stored_is_left_out(tmp_path):
    """Without a signal in the rows (no judge, no reference, no quality profile) there is no
    curve to draw: the report has none, and still renders."""
    (tmp_path / "curated").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "duration_s": [1.0, 2.0]}), tmp_path / "curated" / "part-0.parquet")
    config = PipelineConfig.load(overrides=[])
    out = OutputDir(str(tmp_path))
    report = build_report(out, config, input_rows=2)
    assert report["whatif"] == [] and report["languages"] is None
    write_report(out, report, config)
    assert "Threshold what-ifs" not in (tmp_path / "report.html").read_text()


def _chromium(*args: str, profile) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # a headless browser
def test_whatif_page_renders_in_chromium_with_each_gate_marked(built, config, tmp_path):
    """Each gate's section has its plot (a PNG that decodes, with the kept hours in green and
    the threshold as a red line), its table of thresholds per share of hours, and players for the kept clips at
    its margin that play in the browser; the language table is on the page."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium is not installed (make sysdeps)")
    from PIL import Image

    out, _, report = built
    write_report(out, report, config)
    page = out.path("report.html")
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", f"file://{page}", profile=tmp_path / "p").stdout
    assert '<table id="languages">' in dom
    for g in report["whatif"]:
        section = dom[dom.index(f'id="gate-{g["column"]}"'):].split("</section>")[0]
        png = re.search(r'alt="what-if: [^"]+" src="data:image/png;base64,([^"]+)"', section).group(1)
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")).astype(int)
        red = np.sum((abs(img[..., 0] - 0xCC) < 16) & (img[..., 1] < 24) & (img[..., 2] < 24))
        green = np.sum((abs(img[..., 0] - 0x44) < 12) & (abs(img[..., 1] - 0xAA) < 12) & (abs(img[..., 2] - 0x44) < 12))
        assert red > 50 and green > 500, (g["column"], red, green)  # the threshold marked; the kept hours drawn
        assert "class=\"shares\"" in section
        durations = [float(x) for x in re.findall(r'<audio[^>]*data-duration="([0-9.]+)"', section)]
        assert len(durations) == len(g["margin"]["kept"]) == MARGIN_CLIPS and all(d > 1.0 for d in durations), g["column"]
    assert "data-error" not in dom


def test_the_english_default_language_gate_is_a_what_if_with_its_threshold_and_language():
    """The default hears the language beside tiny.en and keeps English at P >= min_prob: the
    what-if marks that threshold and counts a clip heard as German as rejected at any threshold."""
    from audiocurate.config import PipelineConfig
    from audiocurate.report.whatif import gates_of

    config = PipelineConfig.load()
    gate = next(g for g in gates_of(config) if g.drop_reason == "language")
    assert gate.threshold == config.filters.language.min_prob == 0.6
    t = pa.table({"language": ["en", "de", "en"], "language_prob": pa.array([0.9, 0.99, 0.5], pa.float32())})
    values = gate.values(t)
    assert values[0] == pytest.approx(0.9) and np.isnan(values[1]) and values[2] == pytest.approx(0.5)


def test_the_hf_dataset_card_lists_every_gate_its_threshold_and_the_hours_it_removed(built, config):
    """Hours per drop reason come from the stored rows; the card names each gate's setting and
    threshold (quality profile: the signal gates too) and the settings as run."""
    from audiocurate.exports.hf import curation_card

    _, rows, report = built
    by_reason: dict[str, float] = {}
    for r in rows:
        reason = _route(r, config)
        if reason:
            by_reason[reason] = by_reason.get(reason, 0.0) + r["duration_s"] / 3600
    assert report["drop_reason_hours"] == pytest.approx(by_reason)
    card = curation_card(report, config.model_dump(mode="json"))
    for gate in report["whatif"]:
        if gate["threshold"] is not None:
            line = next(l for l in card.splitlines() if l.startswith(f"| `{gate['drop_reason']}` |"))
            assert f"`{gate['setting']}`" in line and f"{gate['threshold']:g}" in line
    for reason, hours in by_reason.items():
        line = next(l for l in card.splitlines() if l.startswith(f"| `{reason}` |"))
        assert line.endswith(f"| {report['drop_reasons'][reason]} | {hours:.3f} |")
    assert "clipping:" in card and "max_clip_fraction: 0.01" in card  # an enabled gate's settings as run
