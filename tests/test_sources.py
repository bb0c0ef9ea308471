"""Every source layout end to end: Common Voice Parquet, HF Parquet, folders with manifests, S3."""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from audiocurate.config import PipelineConfig, SourceConfig
from audiocurate.pipeline import run
from audiocurate.sources import SourceError, open_source

from conftest import QUICK_MODELS, speak

SENTENCES = {
    "a": "The heart pumps blood through the body.",
    "b": "Rivers carry water from the mountains to the sea.",
    "c": "Thanks, see you later at the party tonight.",
}
FORMATS = {"a": ("flac", 48000), "b": ("mp3", 44100), "c": ("opus", 48000)}


@pytest.fixture(scope="module")
def clips():
    return {k: speak(t, rate=FORMATS[k][1], fmt=FORMATS[k][0], speed=140) for k, t in SENTENCES.items()}


def _config(**over) -> PipelineConfig:
    return PipelineConfig.load(overrides=["ray.progress=false", *QUICK_MODELS, *[f"{k}={v}" for k, v in over.items()]])


def _outputs(out) -> dict[str, list[dict]]:
    res = {}
    for s in ("curated", "rejected", "errors"):
        path = os.path.join(out, s)
        res[s] = pq.read_table(path).to_pylist() if os.path.exists(path) else []
    return res


def _assert_transcribed(rows: list[dict]):
    """Each clip has a transcript; together they match the speech (tiny.en on espeak-ng)."""
    assert all(r["transcript"].strip() and r["wer"] is not None for r in rows)
    mean_wer = sum(r["wer"] for r in rows) / len(rows)
    assert mean_wer < 0.35, [(r["transcript"], r["wer"]) for r in rows]


def test_hf_parquet_layout(tmp_path, clips, ray_local):
    table = pa.table({
        "key": list(SENTENCES),
        "audio": [{"bytes": clips[k], "path": f"{k}.{FORMATS[k][0]}"} for k in SENTENCES],
        "text": list(SENTENCES.values()),
    })
    pq.write_table(table, tmp_path / "hf.parquet")
    src = open_source(str(tmp_path / "hf.parquet"), SourceConfig(id_column="key"))
    assert src.kind == "hf_parquet" and src.audio_column == "audio"
    report = run(_config(**{"source.id_column": "key", "filters.wer.reference_column": "text"}),
                 str(tmp_path / "hf.parquet"), str(tmp_path / "out"), echo=lambda s: None)
    assert report["accounting"]["ok"]
    outs = _outputs(tmp_path / "out")
    rows = {r["key"]: r for s in ("curated", "rejected") for r in outs[s]}
    assert set(rows) == set(SENTENCES)
    _assert_transcribed(list(rows.values()))


def test_folder_with_manifest_and_a_missing_file(tmp_path, clips, ray_local):
    folder = tmp_path / "audio"
    (folder / "sub").mkdir(parents=True)
    for k in SENTENCES:
        (folder / "sub" / f"{k}.{FORMATS[k][0]}").write_bytes(clips[k])
    (folder / "extra.wav").write_bytes(b"RIFF....WAVEjunk")  # listed nowhere, broken
    manifest = [{"path": f"sub/{k}.{FORMATS[k][0]}", "text": t, "speaker": f"s{i}"} for i, (k, t) in enumerate(SENTENCES.items())]
    manifest.append({"path": "sub/missing.flac", "text": "gone", "speaker": "s9"})
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(m) for m in manifest))
    src = open_source(str(folder), SourceConfig())
    assert src.kind == "folder" and src.count() == 5
    report = run(_config(**{"filters.wer.reference_column": "text"}), str(folder), str(tmp_path / "out"), echo=lambda s: None)
    assert report["accounting"]["ok"] and report["accounting"]["input"] == 5
    outs = _outputs(tmp_path / "out")
    ok = [f"sub/{k}.{FORMATS[k][0]}" for k in SENTENCES]
    kept = {r["id"]: r for r in outs["curated"] + outs["rejected"]}
    assert set(kept) == set(ok)
    _assert_transcribed(list(kept.values()))
    errors = {r["id"]: r for r in outs["errors"]}
    assert set(errors) == {"sub/missing.flac", "extra.wav"}
    assert "not found" in errors["sub/missing.flac"]["error"]
    assert errors["sub/missing.flac"]["speaker"] == "s9"  # manifest columns carried to errors too
    assert kept[ok[0]]["speaker"] == "s0"


def test_folder_without_manifest_csv_manifest_and_errors(tmp_path, clips):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.flac").write_bytes(clips["a"])
    (folder / "notes.txt").write_text("not audio")
    src = open_source(str(folder), SourceConfig())
    assert src.kind == "folder" and src.count() == 1
    (folder / "manifest.csv").write_text("path,text\na.flac,hello\n")
    assert open_source(str(folder), SourceConfig()).listing.column_names == ["id", "path", "text"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="neither Parquet files nor audio"):
        open_source(str(empty), SourceConfig())
    pq.write_table(pa.table({"x": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(SourceError, match="no audio column"):
        open_source(str(tmp_path / "bad.parquet"), SourceConfig())


@pytest.fixture(scope="module")
def s3_server():
    """A real S3-compatible server on loopback (moto's server mode)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _restart_ray_forwarding(names: list[str]) -> None:
    """A fresh local Ray whose workers get these driver variables through runtime_env."""
    import ray

    from audiocurate.config import RayConfig
    from audiocurate.runtime import init_ray

    ray.shutdown()
    init_ray(RayConfig(num_cpus=2, progress=False, forward_env=names))


def test_s3_input_and_output(tmp_path, clips, s3_server, ray_local):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="speech-in")
    s3.create_bucket(Bucket="speech-out")
    table = pa.table({"id": list(SENTENCES), "audio_bytes": [clips[k] for k in SENTENCES],
                      "sentence": list(SENTENCES.values())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put_object(Bucket="speech-in", Key="cv/part-0.parquet", Body=buf.getvalue())
    # Workers resolve credentials themselves: the keys reach them through Ray's runtime_env
    # (`ray.forward_env`), never inside the pickled filesystems.
    _restart_ray_forwarding(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                             "AWS_EC2_METADATA_DISABLED"])
    config = _config(**{"source.storage.endpoint_url": s3_server, "output.storage.endpoint_url": s3_server,
                        "source.storage.region": "us-east-1", "output.storage.region": "us-east-1"})
    report = run(config, "s3://speech-in/cv/", "s3://speech-out/run1", echo=lambda s: None)
    assert report["accounting"]["ok"] and report["accounting"]["input"] == 3
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="speech-out", Prefix="run1/")["Contents"]]
    assert "run1/report.json" in keys and "run1/_SUCCESS" in keys
    assert any(k.startswith("run1/curated/part-") for k in keys)
    rows = []
    for k in keys:
        if k.startswith(("run1/curated/", "run1/rejected/")) and k.endswith(".parquet"):
            rows += pq.read_table(io.BytesIO(s3.get_object(Bucket="speech-out", Key=k)["Body"].read())).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(SENTENCES)
    _assert_transcribed(rows)
    for r in rows:
        if "audio" in r:
            audio, sr = sf.read(io.BytesIO(r["audio"]["bytes"]))
            assert sr == 16000


@pytest.fixture
def gcs_server():
    """A real GCS-compatible server on loopback (gcp-storage-emulator, in memory)."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    proc = subprocess.Popen([str(exe), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def test_gcs_input_and_output(tmp_path, clips, gcs_server, ray_local):
    import pyarrow.fs as pafs

    # Creating buckets needs a project; the pipeline itself only reads and writes objects.
    admin = pafs.GcsFileSystem(anonymous=True, endpoint_override=gcs_server.split("//")[1], scheme="http",
                               project_id="test")
    admin.create_dir("speech-in")
    admin.create_dir("speech-out")
    table = pa.table({"id": list(SENTENCES), "audio_bytes": [clips[k] for k in SENTENCES],
                      "sentence": list(SENTENCES.values())})
    pq.write_table(table, "speech-in/cv/part-0.parquet", filesystem=admin)
    config = _config(**{"source.storage.endpoint_url": gcs_server, "output.storage.endpoint_url": gcs_server,
                        "source.storage.anonymous": True, "output.storage.anonymous": True})
    report = run(config, "gs://speech-in/cv/", "gs://speech-out/run1", echo=lambda s: None)
    assert report["accounting"]["ok"] and report["accounting"]["input"] == 3
    files = [i.path for i in admin.get_file_info(pafs.FileSelector("speech-out/run1", recursive=True))
             if i.type == pafs.FileType.File]
    assert "speech-out/run1/report.json" in files and "speech-out/run1/_SUCCESS" in files
    rows = []
    for f in files:
        if f.startswith(("speech-out/run1/curated/", "speech-out/run1/rejected/")) and f.endswith(".parquet"):
            rows += pq.read_table(f, filesystem=admin).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(SENTENCES)
    _assert_transcribed(rows)


def test_users_own_dataset_through_build(demo_parquet, ray_local):
    """A Ray user's Dataset (read, renamed, filtered their way) goes through `build` lazily."""
    import ray

    from audiocurate import contract as C
    from audiocurate.filters import corpus_wer
    from audiocurate.pipeline import build
    from audiocurate.sources import from_dataset

    wanted = {"demo_0000", "demo_0007", "demo_0008", "demo_0034", "demo_0035"}  # en-us, rp, en-us, 2 broken
    ds = (ray.data.read_parquet(demo_parquet)
          .filter(lambda r: r["id"] in wanted)
          .rename_columns({"id": "clip", "audio_bytes": "flac"}))
    config = PipelineConfig.load(overrides=["ray.progress=false", "source.id_column=clip", "source.audio_column=flac",
                                            *QUICK_MODELS])
    rows = {r["clip"]: r for r in build(config, ds).take_all()}
    assert set(rows) == wanted
    assert {i for i, r in rows.items() if r[C.ERROR_STAGE]} == {"demo_0034", "demo_0035"}
    assert all(rows[i][C.ERROR_STAGE] == "decode" and "undecodable" in rows[i][C.ERROR] for i in ("demo_0034", "demo_0035"))
    good = [rows[i] for i in ("demo_0000", "demo_0007", "demo_0008")]
    assert corpus_wer([r["sentence"] for r in good], [r["transcript"] for r in good], "whisper_english") < 0.3
    assert all(1 <= r["edu_score_mean"] <= 5 for r in good)

    with pytest.raises(SourceError, match="no audio column 'flac'"):
        from_dataset(ds.drop_columns(["flac"]), config.source)


def test_a_corrupt_parquet_input_is_an_error_naming_the_file(tmp_path):
    from audiocurate.config import SourceConfig
    from audiocurate.sources import SourceError, open_source

    good = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": ["x"], "audio_bytes": [b"RIFF"]}), good)
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"PAR1 this is not Parquet")
    with pytest.raises(SourceError, match=r"b\.parquet is not a readable Parquet file: .*magic bytes"):
        open_source(str(bad), SourceConfig())
    source = open_source(str(tmp_path), SourceConfig())  # the first file is fine, the second is not
    with pytest.raises(SourceError, match=r"b\.parquet is not a readable Parquet file"):
        source.count()


def test_s3_credentials_never_travel_in_stages_outputs_or_logs(tmp_path, clips, s3_server, ray_local, monkeypatch):
    """A secret in the driver's environment: the run works (workers get it through Ray's
    runtime_env), and it is in no pickled source, sink or stage, no output object (config and
    state included), and no line the run prints."""
    import secrets

    import boto3
    from ray import cloudpickle

    from audiocurate.pipeline import build
    from audiocurate.sinks import CurationSink, OutputDir

    secret = "sk-" + secrets.token_hex(12)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    _restart_ray_forwarding(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                             "AWS_EC2_METADATA_DISABLED"])
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="secret-in")
    s3.create_bucket(Bucket="secret-out")
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": list(SENTENCES), "audio_bytes": [clips[k] for k in SENTENCES],
                             "sentence": list(SENTENCES.values())}), buf)
    s3.put_object(Bucket="secret-in", Key="cv/part-0.parquet", Body=buf.getvalue())
    config = _config(**{"source.storage.endpoint_url": s3_server, "output.storage.endpoint_url": s3_server,
                        "source.storage.region": "us-east-1", "output.storage.region": "us-east-1",
                        "ray.forward_env": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]})
    printed: list[str] = []
    report = run(config, "s3://secret-in/cv/", "s3://secret-out/run", echo=printed.append)
    assert report["accounting"]["ok"]
    source = open_source("s3://secret-in/cv/", config.source)
    out = OutputDir("s3://secret-out/run", config.output.storage)
    sink = CurationSink(out, source.id_column, source.carried_columns)
    pickled = cloudpickle.dumps((source, out, sink, build(config, source)))
    assert secret.encode() not in pickled
    for obj in s3.list_objects_v2(Bucket="secret-out", Prefix="run/")["Contents"]:
        body = s3.get_object(Bucket="secret-out", Key=obj["Key"])["Body"].read()
        assert secret.encode() not in body, obj["Key"]
    assert secret not in "\n".join(printed) + json.dumps(report, default=str)


def test_duplicate_ids_are_found_across_files_and_buckets(tmp_path, ray_local, monkeypatch):
    """Ids repeated within and across files are found by hash bucket in Ray tasks, with one
    bucket or many, or in the driver for a small input, and only they come back."""
    from audiocurate.sources import ids as ids_mod
    from audiocurate.sources.ids import find_duplicate_ids

    d = tmp_path / "in"
    d.mkdir()
    for f, names in enumerate([["a", "b", "c", "a"], ["d", "e", "b", None], ["f", None, "g", "h", "b", None]]):
        pq.write_table(pa.table({"id": pa.array(names, pa.string()), "audio_bytes": [b"x"] * len(names)}),
                       d / f"part-{f}.parquet")
    source = open_source(str(d), SourceConfig())
    for bucket_rows, driver_files in ((1_000_000, 8), (1_000_000, 0), (3, 8)):  # driver; one bucket; five
        monkeypatch.setattr(ids_mod, "_ROWS_PER_BUCKET", bucket_rows)
        monkeypatch.setattr(ids_mod, "_DRIVER_FILES", driver_files)
        found = find_duplicate_ids(source)
        assert (found.ids, found.rows, found.examples) == (2, 3, ["a", "b"])
        assert found.null_rows == 3 and found.first_null == f"row index 3 of {d / 'part-1.parquet'}"
    unique = tmp_path / "unique.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "audio_bytes": [b"1", b"2"]}), unique)
    assert find_duplicate_ids(open_source(str(unique), SourceConfig())).ids == 0


def test_an_input_with_duplicate_ids_is_refused_at_start_naming_them(tmp_path, ray_local, demo_parquet):
    from audiocurate.config import PipelineConfig
    from audiocurate.pipeline import run
    from audiocurate.sources.ids import DuplicateIdsError

    t = pq.read_table(demo_parquet)
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.concat_tables([t, t.slice(5, 2)]), dup)
    config = PipelineConfig.load(overrides=["ray.progress=false", *QUICK_MODELS])
    with pytest.raises(DuplicateIdsError, match=r"2 id\(s\) that occur more than once .*'demo_0005', 'demo_0006'"):
        run(config, str(dup), str(tmp_path / "out"), echo=lambda s: None)
    assert not (tmp_path / "out" / "curated").exists()
    # a unique input is checked once per output, not again on resume
    report = run(config, demo_parquet, str(tmp_path / "ok"), limit=3, echo=lambda s: None)
    again = run(config, demo_parquet, str(tmp_path / "ok"), limit=5, echo=lambda s: None)
    assert report["accounting"]["ok"] and again["accounting"]["ok"]
    attempts = again["attempts"]
    assert attempts[0]["duplicate_id_check_s"] is not None and attempts[-1]["duplicate_id_check_s"] is None


def test_null_ids_are_counted_and_located_not_taken_for_duplicates(tmp_path):
    """On Arrow arrays and on Parquet files read in the driver: nulls are counted apart from
    the ids (two nulls are not a duplicate of 'None'), and the first is located by file and row."""
    from audiocurate.sources.ids import NullIds, find_duplicate_ids, null_ids

    assert null_ids(pa.array(["a", None, "b", None], pa.string())) == NullIds(2, 1)
    assert null_ids(pa.array(["a", "b"], pa.string())) == NullIds(0, -1)
    assert null_ids(pa.chunked_array([[1, 2], [None]], pa.int64()).combine_chunks()) == NullIds(1, 2)
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "audio_bytes": [b"x"] * 2}), d / "part-0.parquet")
    pq.write_table(pa.table({"id": ["c", None, "None", None, "c"], "audio_bytes": [b"x"] * 5}), d / "part-1.parquet")
    found = find_duplicate_ids(open_source(str(d), SourceConfig()))
    assert (found.ids, found.rows, found.examples) == (1, 1, ["c"])
    assert found.null_rows == 2 and found.first_null == f"row index 1 of {d / 'part-1.parquet'}"
    clean = find_duplicate_ids(open_source(str(d / "part-0.parquet"), SourceConfig()))
    assert clean.null_rows == 0 and clean.first_null is None


@pytest.mark.parametrize("nulls", [1, 2])
def test_an_input_with_null_ids_is_refused_at_start_counting_them(tmp_path, ray_local, demo_parquet, nulls):
    """One null id or two: the same refusal, before any row is processed, saying how many and
    where the first is (before: one null id ran and landed in rejected/ with a null id, two
    were refused as duplicates of 'None')."""
    from audiocurate.config import PipelineConfig
    from audiocurate.pipeline import run
    from audiocurate.sources.ids import NullIdsError

    t = pq.read_table(demo_parquet).slice(0, 6)
    ids = t["id"].to_pylist()
    for k in range(nulls):
        ids[2 + 2 * k] = None
    bad = tmp_path / "nulls.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("id"), "id", pa.array(ids, pa.string())), bad)
    config = PipelineConfig.load(overrides={"ray.progress": False})
    values = "value" if nulls == 1 else "values"
    with pytest.raises(NullIdsError, match=rf"the id column `id` has {nulls} null {values} \(the first at row index 2 of .*nulls.parquet\)"):
        run(config, str(bad), str(tmp_path / "out"), echo=lambda s: None)
    assert not any((tmp_path / "out" / s).exists() for s in ("curated", "rejected", "errors"))


def test_null_ids_in_a_folder_manifest_are_refused_too(tmp_path, clips):
    from audiocurate.sources.ids import NullIdsError, refuse_duplicate_ids

    folder = tmp_path / "audio"
    folder.mkdir()
    for k in SENTENCES:
        (folder / f"{k}.{FORMATS[k][0]}").write_bytes(clips[k])
    manifest = [{"path": f"{k}.{FORMATS[k][0]}", "id": None if k == "b" else k} for k in SENTENCES]
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(m) for m in manifest))
    with pytest.raises(NullIdsError, match=r"has 1 null value \(the first at row index 1 of the folder's listing"):
        refuse_duplicate_ids(open_source(str(folder), SourceConfig()))


def _shards_on(fs, root: str, n: int) -> list[dict]:
    """`n` shards of 3 rows, as a run leaves them (part counts in each footer)."""
    from audiocurate.run_state import FOOTER_KEY

    rows = []
    for k in range(n):
        part = [{"id": f"c{k}-{i}", "transcript": f"shard {k} row {i}", "audio": {"bytes": bytes([k, i]) * 50}}
                for i in range(3)]
        table = pa.Table.from_pylist(part).replace_schema_metadata({FOOTER_KEY: json.dumps({f"f#{k}": 3})})
        pq.write_table(table, f"{root}/curated/part-{k:04d}.parquet", filesystem=fs)
        rows += part
    return rows


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_compaction_on_object_storage_writes_each_file_whole(store, request):
    """The merge streams into a temporary object moved into place once whole: on S3 and GCS
    the merged file holds every row, the footers' counts are summed, and nothing is left over."""
    import pyarrow.fs as pafs

    from audiocurate.compaction import compact
    from audiocurate.config import StorageConfig
    from audiocurate.run_state import FOOTER_KEY
    from audiocurate.sinks import OutputDir

    if store == "s3":
        import boto3

        endpoint = request.getfixturevalue("s3_server")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="compact-out")
        storage = StorageConfig(endpoint_url=endpoint, region="us-east-1")
        uri = "s3://compact-out/run"
    else:
        endpoint = request.getfixturevalue("gcs_server")
        pafs.GcsFileSystem(anonymous=True, endpoint_override=endpoint.split("//")[1], scheme="http",
                           project_id="test").create_dir("compact-out")
        storage = StorageConfig(endpoint_url=endpoint, anonymous=True)
        uri = "gs://compact-out/run"
    out = OutputDir(uri, storage)
    rows = _shards_on(out.fs, out.root, 5)
    result = compact(out, target_mb=64)
    assert result.files_before["curated"] == 5 and result.files_after["curated"] == 1
    names = [i.base_name for i in out.fs.get_file_info(pafs.FileSelector(out.path("curated"), recursive=True))]
    assert len(names) == 1 and names[0].startswith("part-c"), names
    with out.fs.open_input_file(out.part_files("curated")[0]) as f:
        merged = pq.read_table(f)
    assert sorted(merged.to_pylist(), key=lambda r: r["id"]) == sorted(rows, key=lambda r: r["id"])
    assert json.loads(merged.schema.metadata[FOOTER_KEY]) == {f"f#{k}": 3 for k in range(5)}
