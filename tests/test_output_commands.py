"""The command line on an output, as a user meets it: one writer at a time, `verify` and its
repair, `_SUCCESS` only on an exact output, one line and the documented exit code for each
user error, signals, and the subcommands on an output kept on S3 or GCS servers on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiocurate.cli import main

from conftest import QUICK_MODELS, speak

SENTENCES = ["Plants need light and water to grow.", "Copper conducts heat and electricity well.",
             "The moon orbits the earth once a month.", "Okay see you tomorrow.",
             "Volcanoes form where plates meet.", "Bees carry pollen between flowers."]
# No model: transcripts from the input's column, no judge. The plumbing is what is under test.
FAST = ["ray.progress=false", "ray.probe_engines=false", "asr.backend=none", "asr.text_column=sentence",
        "judge.backend=none", "output.rows_per_shard=2"]


def _flags(overrides: list[str]) -> list[str]:
    """Configuration overrides as the CLI takes them: `--set KEY=VALUE` each."""
    return [x for kv in overrides for x in ("--set", kv)]


def _sets(extra: list[str] = ()) -> list[str]:
    return _flags([*FAST, *extra])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cmd")
    rows = [{"id": f"c{i}", "audio_bytes": speak(s), "sentence": s} for i, s in enumerate(SENTENCES)]
    rows.append({"id": "broken", "audio_bytes": b"not audio", "sentence": ""})
    pq.write_table(pa.Table.from_pylist(rows), d / "in.parquet", row_group_size=3)
    return d / "in.parquet"


def _ids(out: Path) -> dict[str, list[str]]:
    return {s: sorted(pq.read_table(out / s, columns=["id"])["id"].to_pylist()) if (out / s).exists() else []
            for s in ("curated", "rejected", "errors")}


def test_verify_finds_an_old_double_write_and_repair_makes_it_exact(clips, tmp_path, ray_local, capsys):
    out = tmp_path / "out"
    assert main(["run", str(clips), str(out), *_sets()]) == 0
    assert (out / "_SUCCESS").exists()
    before = _ids(out)
    assert main(["verify", str(out)]) == 0
    assert "exact, marked complete" in capsys.readouterr().out
    # what two runs into one OUTPUT left with an older version: the same rows in a second shard
    shard = sorted((out / "curated").glob("part-*.parquet"))[0]
    shutil.copy(shard, shard.with_name("part-0000000000older0000000.parquet"))
    copied = pq.read_metadata(shard).num_rows
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    said = capsys.readouterr().out
    assert "duplicated ids" in said and "NOT exact" in said and "removed _SUCCESS" in said
    assert not (out / "_SUCCESS").exists()
    # the run command on it: MISMATCH, exit 1, no _SUCCESS, and how to repair
    assert main(["run", str(clips), str(out), *_sets()]) == 1
    err = capsys.readouterr().err
    assert "MISMATCH" in err and "--repair" in err and not (out / "_SUCCESS").exists()
    assert main(["verify", str(out), "--repair"]) == 0
    assert f"removed {copied} duplicated rows" in capsys.readouterr().out
    assert _ids(out) == before
    assert main(["run", str(clips), str(out), *_sets()]) == 0 and (out / "_SUCCESS").exists()


def test_verify_names_missing_rows(clips, tmp_path, ray_local, capsys):
    out = tmp_path / "out"
    assert main(["run", str(clips), str(out), *_sets()]) == 0
    for shard in (out / "curated").glob("part-*.parquet"):
        shard.unlink()
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    said = capsys.readouterr().out
    assert "missing" in said and "c0" in said


def _user_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_user_errors_are_one_line_and_exit_2(clips, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("asr:\n  beam_size: [1, 2\n")
    assert "not valid YAML at line" in _user_error(capsys, ["run", str(clips), str(tmp_path / "o"), "--config", str(bad)])
    listed = tmp_path / "list.yaml"
    listed.write_text("- asr\n- judge\n")
    assert "found a list" in _user_error(capsys, ["run", str(clips), str(tmp_path / "o"), "--config", str(listed)])
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "cannot write" in _user_error(capsys, ["run", str(clips), str(a_file), *_sets()])
    assert "holds no audiocurate run" in _user_error(capsys, ["verify", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main(["run", str(clips), str(tmp_path / "o"), "--limit", "-1"])
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_a_read_only_output_is_one_line(clips, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
        if r.returncode:
            pytest.skip(f"root cannot be denied a write here and cannot mount a read-only tmpfs: {r.stderr!r}")
    else:
        ro.chmod(0o555)
    try:
        assert "cannot write" in _user_error(capsys, ["run", str(clips), str(ro / "out"), *_sets()])
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)])


def _cli(*argv: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "audiocurate.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_run_into_one_output_is_refused_naming_the_first(clips, tmp_path):
    out = tmp_path / "out"
    first = _cli("run", str(clips), str(out), *_sets())
    _wait_for(out / "_state" / "lease.json", first)
    second = _cli("run", str(clips), str(out), *_sets())
    _, err = second.communicate(timeout=120)
    assert second.returncode == 4, err
    assert f"pid {first.pid}" in err and "in use by run on host" in err
    for command in (["compact", str(out)], ["export", str(out), "nemo", str(tmp_path / "nemo")]):
        if first.poll() is None:
            p = _cli(*command)
            _, err = p.communicate(timeout=60)
            assert p.returncode == 4 or first.poll() is not None, err
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert main(["verify", str(out)]) == 0
    ids = _ids(out)
    assert sum(len(v) for v in ids.values()) == len(SENTENCES) + 1


# A run with real models, so that it runs long enough to be signalled mid-execution.
MODEL_RUN = _flags(["ray.progress=false", "output.rows_per_shard=1", "asr.resources.batch_size=1", *QUICK_MODELS])


def _interrupt(clips: Path, out: Path, sig: int) -> tuple[int, str, dict]:
    """Start a run with a real model (so that it runs long enough), signal it mid-execution."""
    # A shell starts a background job (`make test &`) with SIGINT ignored, a child inherits that,
    # and Python then never raises KeyboardInterrupt: start the run as a foreground command is.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        proc = _cli("run", str(clips), str(out), *MODEL_RUN)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    attempts = out / "_state" / "attempts"
    deadline = time.time() + 240
    while not (attempts.exists() and any(attempts.glob("*.json"))):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    attempt = json.loads(next(attempts.glob("*.json")).read_text())
    return proc.returncode, err, attempt


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,said", [(signal.SIGINT, 130, "interrupted; run the same command again to resume"),
                                            (signal.SIGTERM, 143, "terminated (SIGTERM); run the same command again")])
def test_a_signal_stops_the_run_cleanly_and_the_rerun_is_exact(clips, tmp_path, sig, code, said):
    out = tmp_path / "out"
    returncode, err, attempt = _interrupt(clips, out, sig)
    assert returncode == code, err
    assert said in err
    assert "Traceback" not in err and "Fatal Python error" not in err and "*** SIG" not in err, err
    assert attempt["status"] == "interrupted"
    assert not (out / "_state" / "lease.json").exists()
    rerun = _cli("run", str(clips), str(out), *MODEL_RUN)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    ids = _ids(out)
    everything = [i for v in ids.values() for i in v]
    assert sorted(everything) == sorted([f"c{i}" for i in range(len(SENTENCES))] + ["broken"])


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_subcommands_reach_an_output_on_object_storage(clips, store, request, tmp_path):
    """Each command in its own process, as a user runs them: the run's local Ray gets the test
    server's credentials from its environment."""
    import pyarrow.fs as pafs

    if store == "s3":
        endpoint = request.getfixturevalue("s3_server")
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="cmd-out")
        storage = [f"output.storage.endpoint_url={endpoint}", "output.storage.region=us-east-1"]
        uri = "s3://cmd-out/run"
    else:
        endpoint = request.getfixturevalue("gcs_server")
        pafs.GcsFileSystem(anonymous=True, endpoint_override=endpoint.split("//")[1], scheme="http",
                           project_id="test").create_dir("cmd-out")
        storage = [f"output.storage.endpoint_url={endpoint}", "output.storage.anonymous=true"]
        uri = "gs://cmd-out/run"
    reach = _flags(storage)

    def cli(*argv: str) -> None:
        p = _cli(*argv)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, (argv, out, err)

    cli("run", str(clips), uri, *_sets(storage))
    cli("verify", uri, *reach)
    cli("report", uri, *reach)
    cli("export", uri, "nemo", str(tmp_path / "nemo"), *reach)
    manifest = [json.loads(x) for x in next((tmp_path / "nemo").rglob("*.json*")).read_text().splitlines() if x]
    assert len(manifest) == len(_ids_of_curated(uri, storage)) > 0
    cli("compact", uri, *reach)
    cli("verify", uri, *reach)


def _ids_of_curated(uri: str, storage: list[str]) -> list[str]:
    from audiocurate.config import PipelineConfig
    from audiocurate.sinks import OutputDir

    cfg = PipelineConfig.load(overrides=storage)
    out = OutputDir(uri, cfg.output.storage)
    ids = []
    for p in out.part_files("curated"):
        with out.fs.open_input_file(p) as f:
            ids += pq.read_table(f, columns=["id"])["id"].to_pylist()
    return ids


from test_sources import gcs_server, s3_server  # noqa: E402,F401  real servers on loopback
