"""Each export read back by its own library (webdataset, lhotse, datasets), and NeMo's
manifest checked by the rules NeMo's parser applies; resumable and exact."""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from audiocurate.exports.member_names import member_name

from conftest import QUICK_MODELS, speak

SENTENCES = [
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The heart pumps blood through the arteries to every part of the body.",
    "Fractions describe parts of a whole, like one half or three quarters.",
    "Volcanoes form where molten rock rises through cracks in the crust.",
    "Gravity pulls objects toward each other, which is why apples fall down.",
    "The water cycle moves water from oceans to clouds to rivers and back.",
    "Hey, are we still on for pizza tonight or what?",
    "Lol no way, that party was so wild last weekend.",
]
# Common Voice ids are file names; ours also have slashes and two that differ only in punctuation.
IDS = ["cv/common_voice_en_1.mp3", "cv/common_voice_en_2.mp3", "a.b.c", "a_b_c", "x/y/z.flac", "plain",
       "chat.1", "chat/2"]


@pytest.fixture(scope="module")
def curated(tmp_path_factory, ray_local):
    """A real run whose output is exported at run time too (`output.formats`)."""
    from audiocurate.config import PipelineConfig
    from audiocurate.pipeline import run

    d = tmp_path_factory.mktemp("exports")
    rows = [{"id": i, "audio_bytes": speak(s, rate=22050, fmt="flac"), "sentence": s, "accent": "us"}
            for i, s in zip(IDS, SENTENCES)]
    pq.write_table(pa.Table.from_pylist(rows), d / "in.parquet")
    config = PipelineConfig.load(overrides=["ray.progress=false", "output.rows_per_shard=2",
                                            "output.formats=[webdataset, nemo]", "output.export_shard_size=2",
                                            *QUICK_MODELS])
    report = run(config, str(d / "in.parquet"), str(d / "out"), echo=lambda s: None)
    table = pq.read_table(d / "out" / "curated")
    assert report["accounting"]["ok"] and table.num_rows >= 4 and report["accounting"]["rejected"] >= 1, report["drop_reasons"]
    return d / "out", {r["id"]: r for r in table.to_pylist()}


def test_webdataset_reads_every_clip_once_with_dotted_and_slashed_ids(curated):
    import webdataset as wds

    out, rows = curated
    shards = sorted(glob.glob(str(out / "exports" / "webdataset" / "shard-*.tar")))
    assert len(shards) >= 2  # shard size 2
    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert "." not in sample["__key__"] and "/" not in sample["__key__"]
        audio, rate = sf.read(io.BytesIO(sample["flac"]))
        assert rate == 16000 and len(audio) / rate == pytest.approx(meta["duration_s"], abs=0.01)
        seen[meta["id"]] = meta
    assert sorted(seen) == sorted(rows), "every curated clip once"
    assert all(seen[i]["transcript"] == rows[i]["transcript"] and seen[i]["edu_score"] == rows[i]["edu_score"]
               and seen[i]["accent"] == "us" for i in rows)


def nemo_entries(manifest: str) -> list[dict]:
    """The checks NeMo's `ASRAudioText` collection makes when it parses a manifest line
    (nemo/collections/common/parts/preprocessing/manifest.py, `__parse_item`): an
    `audio_filepath` (or `audio_filename`), a `duration`, the text in `text` (or
    `normalized_text`), an optional `offset`; a relative path is taken relative to the
    manifest's folder."""
    out = []
    with open(manifest) as f:
        for line in f:
            item = json.loads(line)
            audio = item.get("audio_filepath") or item.get("audio_filename")
            assert audio, "NeMo: audio_filepath is required"
            assert isinstance(item["duration"], (int, float)) and item["duration"] > 0
            assert isinstance(item.get("text", item.get("normalized_text")), str)
            assert item.get("offset") in (None, 0, 0.0)
            out.append({**item, "_path": audio if os.path.isabs(audio) else os.path.join(os.path.dirname(manifest), audio)})
    return out


def test_nemo_manifest_parses_as_nemo_does_and_its_paths_resolve(curated):
    out, rows = curated
    entries = nemo_entries(str(out / "exports" / "nemo" / "manifest.jsonl"))
    assert sorted(e["id"] for e in entries) == sorted(rows)
    for e in entries:
        assert sf.info(e["_path"]).duration == pytest.approx(e["duration"], abs=0.01)
        assert e["text"] == rows[e["id"]]["transcript"]


def test_nemo_tarred_layout(curated, tmp_path):
    from audiocurate.exports import ExportOptions
    from audiocurate.exports.run import export

    out, rows = curated
    dest = tmp_path / "tarred"
    export(str(out), "nemo", str(dest), options=ExportOptions(shard_size=3, tarred=True), echo=lambda s: None)
    tars = (dest / "tarred_audio_filepaths.txt").read_text().split()
    members = {}
    for k, name in enumerate(tars):
        with tarfile.open(dest / name) as tar:
            for m in tar.getmembers():
                members[m.name] = (k, len(tar.extractfile(m).read()))
    entries = nemo_entries(str(dest / "tarred_audio_manifest.json"))
    assert sorted(e["id"] for e in entries) == sorted(rows)
    for e in entries:
        assert members[e["audio_filepath"]][0] == e["shard_id"]


def test_lhotse_shar_reads_cuts_with_audio_and_supervisions(curated, tmp_path):
    from lhotse import CutSet

    from audiocurate.exports.run import export

    out, rows = curated
    export(str(out), "lhotse", str(tmp_path / "shar"), echo=lambda s: None)
    cuts = {c.custom["id"]: c for c in CutSet.from_shar(in_dir=str(tmp_path / "shar"))}  # the real id
    assert sorted(cuts) == sorted(rows)
    for cid, c in cuts.items():
        audio = c.load_audio()
        assert c.id == member_name(cid) and c.supervisions[0].id == c.id
        assert c.sampling_rate == 16000 and audio.shape[1] == pytest.approx(rows[cid]["duration_s"] * 16000, abs=160)
        assert c.supervisions[0].text == rows[cid]["transcript"]
        assert c.custom["edu_score"] == rows[cid]["edu_score"]


def test_hf_folder_loads_with_an_audio_feature(curated, tmp_path):
    import datasets

    from audiocurate.exports.run import export

    out, rows = curated
    export(str(out), "hf", str(tmp_path / "hf"), echo=lambda s: None)
    ds = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(ds.features["audio"], datasets.Audio) and len(ds) == len(rows)
    # datasets >= 4 decodes Audio only with torchcodec; the bytes are there without it.
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    for r in ds:
        audio, rate = sf.read(io.BytesIO(r["audio"]["bytes"]))
        assert rate == 16000 and r["transcript"] == rows[r["id"]]["transcript"]


def test_an_interrupted_export_completes_exactly(curated, tmp_path):
    import webdataset as wds

    from audiocurate.exports import ExportOptions
    from audiocurate.exports.run import export

    out, rows = curated
    dest = tmp_path / "wds"
    first = export(str(out), "webdataset", str(dest), options=ExportOptions(shard_size=1), echo=lambda s: None)
    shards = sorted(glob.glob(str(dest / "shard-*.tar")))
    # as if killed: one shard's last tar never written, another half written
    os.remove(shards[-1])
    with open(shards[0], "r+b") as f:
        f.truncate(100)
    os.remove(shards[0])
    again = export(str(out), "webdataset", str(dest), options=ExportOptions(shard_size=1), echo=lambda s: None)
    assert 1 <= again["exported_now"] <= 2 and again["clips"] == first["clips"]
    ids = [json.loads(s["json"])["id"] for s in wds.WebDataset(sorted(glob.glob(str(dest / "shard-*.tar"))),
                                                               shardshuffle=False)]
    assert sorted(ids) == sorted(rows)


def test_rejected_rows_export_with_audio_read_back_from_the_input(curated, tmp_path):
    import webdataset as wds

    from audiocurate.exports.run import export

    out, _ = curated
    rejected = pq.read_table(out / "rejected").to_pylist()
    export(str(out), "webdataset", str(tmp_path / "rej"), split="rejected", echo=lambda s: None)
    got = {json.loads(s["json"])["id"]: s for s in wds.WebDataset(sorted(glob.glob(str(tmp_path / "rej" / "*.tar"))),
                                                                   shardshuffle=False)}
    assert sorted(got) == sorted(r["id"] for r in rejected)
    assert all(sf.read(io.BytesIO(s["flac"]))[1] == 16000 for s in got.values())


def test_segment_rows_export_with_their_parent_and_times(tmp_path, ray_local):
    """Rows cut from a long recording (`parent_id`, `start_s`, `end_s`, word timestamps) keep
    them in every export; lhotse gets the words as the supervision's alignment."""
    import webdataset as wds
    from lhotse import CutSet

    from audiocurate.audio import decode_audio, encode_flac
    from audiocurate.exports.run import export
    from audiocurate.sinks import OutputDir

    clip = decode_audio(speak("Rivers carry water to the sea.", fmt="flac"), target_rate=16000)
    words = [{"word": "Rivers", "start_s": 0.1, "end_s": 0.5, "probability": 0.9},
             {"word": "carry", "start_s": 0.5, "end_s": 0.8, "probability": 0.8}]
    rows = [{"id": f"talk.mp3@{s:09.3f}", "parent_id": "talk.mp3", "start_s": s, "end_s": s + clip.duration_s,
             "audio": {"bytes": encode_flac(clip.pcm), "path": f"seg{k}.flac"}, "transcript": "Rivers carry water to the sea.",
             "duration_s": clip.duration_s, "edu_score": 4, "words": words} for k, s in enumerate((0.0, 12.5))]
    out = tmp_path / "out"
    (out / "curated").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "curated" / "part-seg.parquet")
    OutputDir(str(out)).write_json("_state/run.json", {"input": "n/a"})

    export(str(out), "lhotse", str(tmp_path / "shar"), echo=lambda s: None)
    cuts = {c.custom["id"]: c for c in CutSet.from_shar(in_dir=str(tmp_path / "shar"))}
    assert sorted(cuts) == sorted(r["id"] for r in rows)
    c = cuts[rows[1]["id"]]
    assert c.custom["parent_id"] == "talk.mp3" and c.custom["start_s"] == 12.5
    assert [a.symbol for a in c.supervisions[0].alignment["word"]] == ["Rivers", "carry"]

    export(str(out), "nemo", str(tmp_path / "nemo"), echo=lambda s: None)
    entries = nemo_entries(str(tmp_path / "nemo" / "manifest.jsonl"))
    assert {(e["parent_id"], e["start_s"]) for e in entries} == {("talk.mp3", 0.0), ("talk.mp3", 12.5)}

    export(str(out), "webdataset", str(tmp_path / "wds"), echo=lambda s: None)
    metas = [json.loads(s["json"]) for s in wds.WebDataset(sorted(glob.glob(str(tmp_path / "wds" / "*.tar"))),
                                                            shardshuffle=False)]
    assert sorted((m["parent_id"], m["start_s"], m["end_s"]) for m in metas) == sorted(
        (r["parent_id"], r["start_s"], r["end_s"]) for r in rows)


@pytest.fixture(scope="module")
def clip_id_run(tmp_path_factory, ray_local):
    """A real run of an input keyed by `clip_id` (no `id` column), exported at run time in
    every format."""
    from audiocurate.config import PipelineConfig
    from audiocurate.pipeline import run

    d = tmp_path_factory.mktemp("clip_id")
    rows = [{"clip_id": f"clips/{k}.wav", "audio_bytes": speak(s, fmt="flac"), "sentence": s}
            for k, s in enumerate(SENTENCES[:2] + SENTENCES[6:7])]
    pq.write_table(pa.Table.from_pylist(rows), d / "in.parquet")
    config = PipelineConfig.load(overrides=["ray.progress=false", "source.id_column=clip_id",
                                            "output.formats=[webdataset, nemo, lhotse, hf]", *QUICK_MODELS])
    report = run(config, str(d / "in.parquet"), str(d / "out"), echo=lambda s: None)
    curated = pq.read_table(d / "out" / "curated")
    assert report["accounting"]["ok"] and curated.num_rows >= 1 and "id" not in curated.column_names
    return d / "out", sorted(curated["clip_id"].to_pylist())


def test_every_export_of_a_run_keyed_by_clip_id(clip_id_run, tmp_path):
    """The exports key rows by the run's `source.id_column` (read from the output's recorded
    configuration), at run time and from `export`, rejected rows included."""
    import datasets
    import webdataset as wds
    from lhotse import CutSet

    from audiocurate.exports.run import export

    out, ids = clip_id_run
    exports = out / "exports"
    metas = [json.loads(s["json"]) for s in wds.WebDataset(sorted(glob.glob(str(exports / "webdataset" / "*.tar"))),
                                                            shardshuffle=False)]
    assert sorted(m["clip_id"] for m in metas) == ids
    assert sorted(e["clip_id"] for e in nemo_entries(str(exports / "nemo" / "manifest.jsonl"))) == ids
    cuts = list(CutSet.from_shar(in_dir=str(exports / "lhotse")))
    assert sorted(c.custom["clip_id"] for c in cuts) == ids and all(c.id == member_name(c.custom["clip_id"]) for c in cuts)
    ds = datasets.load_dataset(str(exports / "hf"), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(ds["clip_id"]) == ids
    rejected = sorted(pq.read_table(out / "rejected")["clip_id"].to_pylist())
    export(str(out), "nemo", str(tmp_path / "rej"), split="rejected", echo=lambda s: None)
    assert sorted(e["clip_id"] for e in nemo_entries(str(tmp_path / "rej" / "manifest.jsonl"))) == rejected


def test_curated_shards_read_as_nemos_parquet_reader_reads_them(curated):
    """NeMo's `type: parquet` input (`LazyParquetIterator`, NVIDIA-NeMo/NeMo
    nemo/collections/common/data/lhotse/nemo_adapters.py, PR #15303) reads each file with
    pyarrow into pandas rows; takes `row[audio_field]["bytes"]` (a struct) or raw bytes; decodes
    them with lhotse's `Recording.from_bytes` (the duration comes from the audio, not a column);
    the text from `text_field`, the language from `lang_field`, the cut id from a column named
    `id`. Our shards with `audio_field: audio`, `text_field: transcript`, `lang_field: language`."""
    from lhotse import Recording

    out, rows = curated
    seen = {}
    for path in sorted(glob.glob(str(out / "curated" / "*.parquet"))):
        for batch in pq.ParquetFile(path).iter_batches():
            for _, row in batch.to_pandas().iterrows():
                audio = row.get("audio")
                assert isinstance(audio, dict) and isinstance(audio["bytes"], bytes)
                rec = Recording.from_bytes(data=audio["bytes"], recording_id=str(row.get("id")))
                assert rec.sampling_rate == 16000 and rec.duration == pytest.approx(row["duration_s"], abs=0.01)
                assert isinstance(row.get("transcript"), str) and row.get("transcript").strip()
                seen[row.get("id")] = row.get("transcript")
    assert seen == {i: r["transcript"] for i, r in rows.items()}
