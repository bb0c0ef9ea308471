"""One writer per OUTPUT (lease.py): a live holder is refused, a dead or silent one is taken over,
on a local disk and on an S3 server on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from audiocurate.lease import LEASE, OutputBusyError, OutputLease
from audiocurate.sinks import OutputDir


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    with OutputLease(out, "run"):
        with pytest.raises(OutputBusyError) as e:
            OutputLease(out, "compact").acquire()
        assert f"pid {os.getpid()}" in str(e.value) and socket.gethostname() in str(e.value)
        assert "run on host" in str(e.value) and "started 20" in str(e.value)
    # released: the next one gets it, and the file is gone with it
    assert not (tmp_path / "out" / LEASE).exists()
    with OutputLease(out, "compact"):
        assert json.loads((tmp_path / "out" / LEASE).read_text())["command"] == "compact"


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out" / "_state").mkdir(parents=True)
    (tmp_path / "out" / LEASE).write_text(json.dumps(
        {"token": "x", "host": socket.gethostname(), "pid": dead.pid, "started": time.time(), "renewed": time.time(),
         "ttl_s": 3600, "command": "run"}))
    with OutputLease(out, "run") as lease:
        assert json.loads((tmp_path / "out" / LEASE).read_text())["token"] == lease.token


def test_a_lease_not_renewed_within_its_ttl_is_stale_on_any_host(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    (tmp_path / "out" / "_state").mkdir(parents=True)
    record = {"token": "x", "host": "another-machine", "pid": 1, "started": time.time() - 600, "ttl_s": 60,
              "command": "run"}
    (tmp_path / "out" / LEASE).write_text(json.dumps({**record, "renewed": time.time() - 5}))
    with pytest.raises(OutputBusyError, match="another-machine"):
        OutputLease(out, "run").acquire()
    (tmp_path / "out" / LEASE).write_text(json.dumps({**record, "renewed": time.time() - 61}))
    with OutputLease(out, "run", settle_s=0.01):
        pass


def test_an_unreadable_lease_blocks_only_until_its_ttl(tmp_path):
    """An older version's torn write left an empty lease: it is as old as its file."""
    out = OutputDir(str(tmp_path / "out"))
    (tmp_path / "out" / "_state").mkdir(parents=True)
    (tmp_path / "out" / LEASE).write_text("")
    with pytest.raises(OutputBusyError, match="an unreadable lease"):
        OutputLease(out, "run").acquire()
    old = time.time() - 3600
    os.utime(tmp_path / "out" / LEASE, (old, old))
    with OutputLease(out, "run") as lease:
        assert json.loads((tmp_path / "out" / LEASE).read_text())["token"] == lease.token
    assert not list((tmp_path / "out" / "_state").glob("*.tmp"))


def test_a_holder_whose_lease_was_taken_over_may_not_finish(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    with OutputLease(out, "run") as lease:
        lease.check()
        record = json.loads((tmp_path / "out" / LEASE).read_text())
        (tmp_path / "out" / LEASE).write_text(json.dumps({**record, "token": "another", "pid": 1}))
        with pytest.raises(OutputBusyError, match="taken over"):
            lease.check()


def test_the_holder_renews_its_lease(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    with OutputLease(out, "run", ttl_s=0.4):
        first = json.loads((tmp_path / "out" / LEASE).read_text())["renewed"]
        time.sleep(0.6)
        later = json.loads((tmp_path / "out" / LEASE).read_text())["renewed"]
        assert later > first
        with pytest.raises(OutputBusyError):  # renewed, so never stale while it lives
            OutputLease(out, "run").acquire()


def test_restart_clears_everything_but_the_lease(tmp_path):
    root = tmp_path / "out"
    out = OutputDir(str(root))
    with OutputLease(out, "run"):
        assert not out.state.has_content()  # the lease alone is not output
        out.state.claim({"input": "a", "fingerprint": "1"}, restart=False)
        (root / "curated").mkdir()
        (root / "curated" / "part-x.parquet").write_bytes(b"x")
        assert out.state.has_content()
        out.state.claim({"input": "b", "fingerprint": "2"}, restart=True)
        assert (root / LEASE).exists() and not (root / "curated").exists()


def test_two_processes_racing_for_one_output_get_one_lease(tmp_path):
    """Both start at once; exactly one holds it (O_EXCL on a local disk)."""
    code = ("import sys,time; from audiocurate.lease import OutputLease, OutputBusyError; "
            "from audiocurate.sinks import OutputDir\n"
            "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
            "try:\n    l = OutputLease(OutputDir(sys.argv[1]), 'run').acquire(); time.sleep(1.5); print('held')\n"
            "except OutputBusyError:\n    print('busy')\n")
    at = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out"), at], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["busy", "busy", "held"]


def test_the_lease_works_on_object_storage(s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="lease")
    from audiocurate.config import StorageConfig

    storage = StorageConfig(endpoint_url=s3_server, region="us-east-1")
    out = OutputDir("s3://lease/out", storage)
    with OutputLease(out, "run", settle_s=0.05):
        with pytest.raises(OutputBusyError, match="run on host"):
            OutputLease(OutputDir("s3://lease/out", storage), "export", settle_s=0.05).acquire()
    with OutputLease(out, "export", settle_s=0.05):
        pass


from test_sources import s3_server  # noqa: E402,F401  a real S3 server on loopback
