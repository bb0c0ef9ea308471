"""Export archives name their files from clip ids, and ids come from the input: every export
must hold hostile ids (path traversal, absolute paths, a thousand characters, a newline, a
NUL, case twins) as safe, bounded, distinct member names that Python's safe extractor
(`tarfile` with `filter="data"`) extracts inside the target, and keep the real id in the
format's own metadata, read back by the format's own library."""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from audiocurate.exports.member_names import MAX_STEM, file_extension, member_name

from conftest import speak

# Parquet strings hold any Unicode, NUL and newline included, and a folder source's ids are
# relative paths: every one of these reaches the exports as it is.
HOSTILE_IDS = ["../../etc/x", "/abs/path", "a" * 1000, "line\nbreak", "nul\x00id", "Clip", "clip",
               "x-0123456789abcdef0123", "x", "", "..", "日本語/クリップ.wav", "cv/common_voice_en_1.mp3", "a.b.c", "a_b_c"]


def test_member_names_are_safe_bounded_and_distinct():
    names = [member_name(i) for i in HOSTILE_IDS]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) and len(n) <= MAX_STEM + 21 for n in names), names
    assert len({n.lower() for n in names}) == len(HOSTILE_IDS), "distinct, even on a case-insensitive disk"
    # plain ids stay as they are; one that looks like a changed name is changed too
    assert member_name("clip") == "clip" and member_name("utt_0001-a") == "utt_0001-a"
    assert member_name("x-0123456789abcdef0123") != "x-0123456789abcdef0123" and member_name("Clip") != "Clip"
    assert member_name("a" * 1000) != member_name("a" * 999) and member_name("a" * 1000).startswith("a" * MAX_STEM)
    assert file_extension("x.FLAC") == "flac" and file_extension("x.mp3") == "mp3"
    assert file_extension("../../a.b/c") == "flac" and file_extension("x.fl\nac") == "flac" and file_extension("") == "flac"


@pytest.fixture(scope="module")
def hostile_output(tmp_path_factory):
    """An output whose curated rows carry the hostile ids, written as the sink writes them."""
    from audiocurate.audio import decode_audio, encode_flac
    from audiocurate.sinks import OutputDir

    clip = decode_audio(speak("Rivers carry water to the sea.", fmt="flac"), target_rate=16000)
    flac = encode_flac(clip.pcm)
    rows = [{"id": cid, "audio": {"bytes": flac, "path": f"{cid}.flac"}, "transcript": f"clip {k}",
             "duration_s": clip.duration_s, "edu_score": 4} for k, cid in enumerate(HOSTILE_IDS)]
    out = tmp_path_factory.mktemp("hostile") / "out"
    (out / "curated").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:7]), out / "curated" / "part-a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[7:]), out / "curated" / "part-b.parquet")
    OutputDir(str(out)).write_json("_state/run.json", {"input": "n/a"})
    return out, {r["id"]: r for r in rows}


def _extract_safely(tar_path, jail) -> list[str]:
    """Extracts with the safe filter into `jail/target`; returns the member names. Nothing may
    land outside the target (checked by listing the jail)."""
    target = jail / "target"
    target.mkdir(parents=True)
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        tar.extractall(target, filter="data")
    assert os.listdir(jail) == ["target"]
    for root, _, files in os.walk(target):
        for f in files:
            assert os.path.realpath(os.path.join(root, f)).startswith(str(target.resolve()) + os.sep)
    assert all(len(n) <= 100 and "/" not in n and "\n" not in n for n in names), names
    return names


@pytest.mark.parametrize("fmt", ["webdataset", "nemo", "nemo_tarred", "lhotse", "hf"])
def test_every_export_holds_hostile_ids(fmt, hostile_output, tmp_path, ray_local):
    from audiocurate.exports import ExportOptions
    from audiocurate.exports.run import export

    out, rows = hostile_output
    dest = tmp_path / "dest"
    options = ExportOptions(shard_size=4, tarred=fmt == "nemo_tarred")
    export(str(out), fmt.split("_")[0], str(dest), options=options, echo=lambda s: None)
    tars = sorted(glob.glob(str(dest / "**" / "*.tar"), recursive=True))
    members = [n for k, t in enumerate(tars) for n in _extract_safely(t, tmp_path / f"jail{k}")]
    got: dict[str, dict] = {}  # real id -> what the format's reader gives back

    if fmt == "webdataset":
        import webdataset as wds

        for s in wds.WebDataset(tars, shardshuffle=False):
            got[json.loads(s["json"])["id"]] = {"key": s["__key__"], "audio": s["flac"]}
    elif fmt.startswith("nemo"):
        manifest = dest / ("tarred_audio_manifest.json" if fmt == "nemo_tarred" else "manifest.jsonl")
        for line in manifest.read_text().splitlines():
            e = json.loads(line)
            if fmt == "nemo":
                path = dest / e["audio_filepath"]
                assert path.resolve().parent == (dest / "audio").resolve()
                audio = path.read_bytes()
            else:
                assert e["audio_filepath"] in members
                with tarfile.open(dest / (dest / "tarred_audio_filepaths.txt").read_text().split()[e["shard_id"]]) as tar:
                    audio = tar.extractfile(e["audio_filepath"]).read()
            got[e["id"]] = {"key": e["audio_filepath"], "audio": audio}
    elif fmt == "lhotse":
        from lhotse import CutSet

        for c in CutSet.from_shar(in_dir=str(dest)):
            assert c.id == member_name(c.custom["id"]) and c.load_audio().shape[1] > 16000
            got[c.custom["id"]] = {"key": c.id, "audio": None}
    else:
        import datasets

        ds = datasets.load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
        assert isinstance(ds.features["audio"], datasets.Audio)
        for r in ds.cast_column("audio", datasets.Audio(decode=False)):
            got[r["id"]] = {"key": None, "audio": r["audio"]["bytes"]}

    assert sorted(got) == sorted(rows), "every real id back, exactly"
    if fmt != "hf":
        assert len({g["key"] for g in got.values()}) == len(rows), "distinct names"
    for cid, g in got.items():
        if g["audio"] is not None:
            assert sf.info(io.BytesIO(g["audio"])).samplerate == 16000
