"""`curated/` shards load with Hugging Face `datasets` as they are: the schema metadata from
`hf_feature_metadata` makes `load_dataset("parquet", data_dir=...)` give `audio` as
`Audio(sampling_rate=16000)` and every other column its plain feature, and the clips decode
without torchcodec (`Audio(decode=False)` and soundfile on the bytes)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from audiocurate import contract as C
from audiocurate.exports.hf_features import HF_METADATA_KEY, hf_feature_metadata
from conftest import QUICK_MODELS


def _clip(seconds: float, freq: float) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, format="FLAC")
    return buf.getvalue()


def _curated_like(tmp_path, metadata: bool) -> tuple[str, pa.Table]:
    """Two shards with a curated shard's column types (the sink's resume footer included)."""
    words = pa.list_(pa.struct([("word", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                                ("probability", pa.float64())]))
    schema = pa.schema([("id", pa.string()), (C.AUDIO, C.AUDIO_TYPE), ("transcript", pa.string()),
                        ("edu_score", pa.int64()), ("edu_score_mean", pa.float64()), ("edu_probs", pa.list_(pa.float32())),
                        ("duration_s", pa.float64()), ("words", words), ("up_votes", pa.int32()), ("accent", pa.string())])
    rows = [{"id": f"clip-{i}", C.AUDIO: {"bytes": _clip(0.5 + i / 4, 220 * (i + 1)), "path": f"clip-{i}.flac"},
             "transcript": f"text {i}", "edu_score": 3 + i % 3, "edu_score_mean": 3.2, "edu_probs": [0.1, 0.2, 0.3, 0.2, 0.2],
             "duration_s": 0.5 + i / 4, "words": [{"word": "text", "start_s": 0.0, "end_s": 0.2, "probability": 0.9}],
             "up_votes": i, "accent": None if i else "us"} for i in range(4)]
    table = pa.Table.from_pylist(rows, schema=schema)
    meta = {b"audiocurate.parts": b'{"f#0":4}'}
    if metadata:
        meta = {**meta, **hf_feature_metadata(table.schema)}
    table = table.replace_schema_metadata(meta)
    folder = tmp_path / "curated"
    folder.mkdir()
    pq.write_table(table.slice(0, 2), folder / "part-a.parquet")
    pq.write_table(table.slice(2), folder / "part-b.parquet")
    return str(folder), table


def test_curated_shards_load_with_an_audio_feature_without_a_cast(tmp_path):
    import datasets

    folder, table = _curated_like(tmp_path, metadata=True)
    assert pq.read_schema(f"{folder}/part-a.parquet").metadata[b"audiocurate.parts"] == b'{"f#0":4}', "kept"
    ds = datasets.load_dataset("parquet", data_dir=folder, split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.features["audio"] == datasets.Audio(sampling_rate=16000)
    plain = datasets.Features.from_arrow_schema(table.schema.remove_metadata())
    assert {k: v for k, v in ds.features.items() if k != "audio"} == {k: v for k, v in plain.items() if k != "audio"}
    assert sorted(ds["id"]) == [f"clip-{i}" for i in range(4)] and ds.num_rows == 4
    # Without torchcodec: the bytes, decoded with soundfile.
    raw = ds.cast_column("audio", datasets.Audio(decode=False))
    for r in raw:
        audio, rate = sf.read(io.BytesIO(r["audio"]["bytes"]))
        assert rate == 16000 and len(audio) / rate == r["duration_s"]


def test_without_the_metadata_audio_is_a_plain_struct(tmp_path):
    """The defect the metadata fixes: `datasets` cannot know a struct of bytes is audio."""
    import datasets

    folder, _ = _curated_like(tmp_path, metadata=False)
    ds = datasets.load_dataset("parquet", data_dir=folder, split="train", cache_dir=str(tmp_path / "cache"))
    assert not isinstance(ds.features["audio"], datasets.Audio)


def test_the_metadata_is_what_datasets_writes(tmp_path):
    """The entry reads back as `datasets` itself would write these features; a sampling rate
    of None (output.audio_format: original) is an Audio feature at each file's own rate."""
    import datasets

    _, table = _curated_like(tmp_path, metadata=False)
    written = json.loads(hf_feature_metadata(table.schema)[HF_METADATA_KEY])
    ours = datasets.Features.from_dict(written["info"]["features"])
    theirs = datasets.Features({**datasets.Features.from_arrow_schema(table.schema), "audio": datasets.Audio(sampling_rate=16000)})
    assert all(ours[k] == theirs[k] for k in ours) and "audio" in ours and "id" in ours and "edu_probs" in ours
    native = json.loads(hf_feature_metadata(table.schema, sampling_rate=None)[HF_METADATA_KEY])
    assert datasets.Features.from_dict(native["info"]["features"])["audio"] == datasets.Audio()


def test_the_bytes_path_needs_no_torchcodec(tmp_path):
    """In a process where torchcodec cannot be imported (missing, or broken beside this torch),
    loading and reading the bytes still works."""
    folder, _ = _curated_like(tmp_path, metadata=True)
    code = f"""
import io, sys
sys.modules["torchcodec"] = None  # import torchcodec -> ImportError, as when it is missing
import datasets, soundfile as sf
ds = datasets.load_dataset("parquet", data_dir={folder!r}, split="train", cache_dir={str(tmp_path / "cache2")!r})
assert isinstance(ds.features["audio"], datasets.Audio)
ds = ds.cast_column("audio", datasets.Audio(decode=False))
print(sorted(sf.read(io.BytesIO(r["audio"]["bytes"]))[1] for r in ds))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[16000, 16000, 16000, 16000]"


def test_a_runs_curated_folder_loads_with_an_audio_feature(tmp_path, ray_local, demo_parquet):
    """A real run's curated/ (and the same after compaction): `load_dataset("parquet",
    data_dir=OUTPUT/curated)` gives `Audio(sampling_rate=16000)` as it is, and the clips decode
    from their bytes. Needs the sink to write `hf_feature_metadata` (sinks.py) and compaction
    to keep it (compaction.py)."""
    import datasets

    from audiocurate.compaction import compact
    from audiocurate.config import PipelineConfig
    from audiocurate.pipeline import run
    from audiocurate.sinks import OutputDir

    out = tmp_path / "out"
    config = PipelineConfig.load(overrides=["ray.progress=false", "output.compact_mb=null", *QUICK_MODELS])  # compacted below
    run(config, demo_parquet, str(out), limit=8, echo=lambda s: None)
    report = run(config, demo_parquet, str(out), limit=16, echo=lambda s: None)  # a second attempt's shards
    assert report["accounting"]["curated"] >= 2
    for attempt in ("as written", "compacted"):
        if attempt == "compacted":
            merged = compact(OutputDir(str(out)), target_mb=64)
            assert merged.files_before["curated"] >= 2 and merged.files_after["curated"] == 1
        ds = datasets.load_dataset("parquet", data_dir=str(out / "curated"), split="train",
                                   cache_dir=str(tmp_path / f"cache-{attempt}"))
        assert ds.features["audio"] == datasets.Audio(sampling_rate=16000), attempt
        assert ds.num_rows == report["accounting"]["curated"]
        for r in ds.cast_column("audio", datasets.Audio(decode=False)):
            audio, rate = sf.read(io.BytesIO(r["audio"]["bytes"]))
            assert rate == 16000 and abs(len(audio) / rate - r["duration_s"]) < 0.01
