"""Dedup and caps on segmented outputs (`--profile longform`): both decide per stored segment,
which is what `curated/` holds and what a user trains on, while the output stays accounted per
recording: every segment lands once, a rerun changes nothing.

One input: two spoken recordings that share one sentence (talk0 ends with the sentence talk1
starts with, the same synthesized audio) and an exact copy of the first under another id (a
re-upload). A longform run with dedup on, then a refilter of it with a cap per speaker."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiocurate.cli import main
from audiocurate.config import PipelineConfig
from audiocurate.pipeline import run
from audiocurate.run_state import SPLITS
from audiocurate.sinks import OutputDir

pytestmark = pytest.mark.slow  # two longform runs and a refilter with Whisper tiny.en: minutes on 2 cores

LONGFORM = ["judge.backend=none", "ray.progress=false", "ray.probe_engines=false", "filters.dnsmos.enabled=false",
            "segment.max_s=8", "output.rows_per_shard=2", "asr.language_id_model=null"]  # beam 5: dedup reads transcripts


def _rows(uri: str) -> dict[str, dict]:
    """Every stored row by id, with its split; an id twice fails."""
    seen: dict[str, dict] = {}
    for split in SPLITS:
        for path in OutputDir(uri).part_files(split):
            for row in pq.read_table(path).to_pylist():
                assert row["id"] not in seen, f"{row['id']} twice"
                seen[row["id"]] = {**row, "split": split}
    return seen


def _report(uri: str) -> dict:
    with open(f"{uri}/report.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local):
    """`plain`: the longform run without dedup; `dedup`: the same with `dedup.enabled`."""
    from audiocurate.audio import encode_flac
    from test_segments import SENTENCES, recording

    root = tmp_path_factory.mktemp("segmented_corpus")
    talks = [encode_flac(recording(SENTENCES[3 * k:3 * k + 4])[0]) for k in range(2)]
    rows = [{"id": "talk0.flac", "audio_bytes": talks[0], "speaker": "s0"},
            {"id": "talk1.flac", "audio_bytes": talks[1], "speaker": "s1"},
            {"id": "upload0.flac", "audio_bytes": talks[0], "speaker": "s2"}]
    pq.write_table(pa.Table.from_pylist(rows), root / "in.parquet")
    quiet = {"echo": lambda s: None}
    plain = run(PipelineConfig.load(profile="longform", overrides=LONGFORM), str(root / "in.parquet"),
                str(root / "plain"), **quiet)
    deduped = run(PipelineConfig.load(profile="longform", overrides=[*LONGFORM, "dedup.enabled=true"]),
                  str(root / "in.parquet"), str(root / "dedup"), **quiet)
    assert plain["accounting"]["ok"] and deduped["accounting"]["ok"]
    return root


def test_each_segment_of_a_reuploaded_recording_is_a_duplicate_of_the_same_segment(runs):
    """The copy's segments (cut at the same times) go to rejected/ as `duplicate`, each naming
    the segment kept of those at its start; a segment one recording shares with another goes
    alone (talk0 ends with the sentence talk1 starts with); the copy kept is the longest, then
    the smaller id (no score here); a rerun changes nothing."""
    plain, deduped = _rows(str(runs / "plain")), _rows(str(runs / "dedup"))
    assert plain.keys() == deduped.keys()
    moved = {i: r for i, r in deduped.items() if r["split"] != plain[i]["split"]}
    copies = {i for i, r in plain.items() if r["split"] == "curated" and r["parent_id"] == "upload0.flac"}
    shared = {i for i, r in moved.items() if r["parent_id"] == "talk0.flac"}
    assert copies and moved.keys() == copies | shared
    assert len(shared) == 1 and not any(r["parent_id"] == "talk1.flac" for r in moved.values())
    talk1_first = min((r for r in plain.values() if r["parent_id"] == "talk1.flac"), key=lambda r: r["start_s"])
    (shared_id,) = shared
    assert moved[shared_id]["duplicate_of"] == talk1_first["id"]
    assert deduped[shared_id]["start_s"] == max(r["start_s"] for r in plain.values() if r["parent_id"] == "talk0.flac")
    at_start = {round(r["start_s"], 3): i for i, r in plain.items() if r["parent_id"] == "talk0.flac"}
    for i, r in moved.items():
        assert r["split"] == "rejected" and r["drop_reason"] == "duplicate"
        assert r["segments"] == plain[i]["segments"] and r["parent_id"] == plain[i]["parent_id"]
        kept = deduped[r["duplicate_of"]]
        assert kept["split"] == "curated" and (-kept["duration_s"], kept["id"]) < (-r["duration_s"], r["id"])
        if i in copies:
            twin = deduped[at_start[round(r["start_s"], 3)]]
            assert r["duplicate_of"] == (twin["id"] if twin["split"] == "curated" else twin["duplicate_of"])
    report = _report(str(runs / "dedup"))
    assert report["accounting"]["ok"] and report["accounting"]["recordings"] == 3
    assert report["accounting"]["accounted"] == len(plain)

    config = PipelineConfig.load(profile="longform", overrides=[*LONGFORM, "dedup.enabled=true"])
    run(config, str(runs / "in.parquet"), str(runs / "dedup"), echo=lambda s: None)
    assert {i: (r["split"], r.get("drop_reason")) for i, r in _rows(str(runs / "dedup")).items()} == \
        {i: (r["split"], r.get("drop_reason")) for i, r in deduped.items()}


def test_a_refilter_caps_each_speaker_by_its_segments_after_dedup(runs):
    """A refilter of the deduplicated output with a cap per speaker: each speaker keeps its best
    segments (no score here: the longest, then the smallest id) while their hours fit; the
    duplicates stay duplicates and count toward no cap; every segment lands once, DEST counts
    the three recordings."""
    source = _rows(str(runs / "dedup"))
    durations = sorted(r["duration_s"] for r in source.values() if r["split"] == "curated")
    cap_s = 2.5 * durations[len(durations) // 2]
    dest = str(runs / "capped")
    cap = f"corpus.max_hours_per={{column: speaker, hours: {cap_s / 3600.0}}}"
    assert main(["refilter", str(runs / "dedup"), dest, "--set", cap, "--no-progress"]) == 0

    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for r in source.values():
        if r["split"] == "curated":
            by_speaker[r["speaker"]].append(r)
    want_over = set()
    for group in by_speaker.values():
        total = 0.0
        for r in sorted(group, key=lambda r: (-r["duration_s"], r["id"])):
            total += r["duration_s"]
            if total > cap_s + 1e-9:
                want_over.add(r["id"])
    capped = _rows(dest)
    assert capped.keys() == source.keys()
    over = {i for i, r in capped.items() if r.get("drop_reason") == "over_cap"}
    assert over == want_over and over, "the cap moved nothing"
    assert all(capped[i]["split"] == source[i]["split"] for i in capped if i not in over)
    assert all(capped[i].get("drop_reason") == "duplicate" for i, r in source.items()
               if r.get("drop_reason") == "duplicate")
    kept = defaultdict(float)
    for r in capped.values():
        if r["split"] == "curated":
            kept[r["speaker"]] += r["duration_s"]
    assert all(s <= cap_s + 1e-9 for s in kept.values())
    report = _report(dest)
    assert report["accounting"]["ok"] and report["accounting"]["recordings"] == 3
    assert main(["refilter", str(runs / "dedup"), dest, "--set", cap, "--no-progress"]) == 0
    assert {i: r["split"] for i, r in _rows(dest).items()} == {i: r["split"] for i, r in capped.items()}
    assert np.isclose(sum(r["duration_s"] for r in capped.values()), sum(r["duration_s"] for r in source.values()))
