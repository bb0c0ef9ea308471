"""Fault injection: the machine or the storage fails under a run; nothing is lost, nothing is
written twice, and the rerun of the same command completes the output exactly.

(Concurrent runs and SIGINT/SIGTERM: test_output_commands.py; engines that fail transiently
or for good: test_engine_faults.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiocurate.cli import main

from conftest import speak

SENTENCES = ["Plants need light and water to grow.", "Copper conducts heat and electricity well.",
             "The moon orbits the earth once a month.", "Okay see you tomorrow.",
             "Volcanoes form where plates meet.", "Bees carry pollen between flowers.",
             "Rivers carry sand down to the sea.", "Iron rusts when it meets water and air."]
FAST = ["ray.progress=false", "ray.probe_engines=false", "asr.backend=none", "asr.text_column=sentence",
        "judge.backend=none", "output.rows_per_shard=1", "asr.resources.batch_size=1"]


def _sets(extra: list[str] = ()) -> list[str]:
    return [x for kv in [*FAST, *extra] for x in ("--set", kv)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    rows = [{"id": f"c{i}", "audio_bytes": speak(s), "sentence": s} for i, s in enumerate(SENTENCES)]
    pq.write_table(pa.Table.from_pylist(rows), d / "in.parquet", row_group_size=2)
    return d / "in.parquet"


def _all_ids(read) -> list[str]:
    ids = []
    for split in ("curated", "rejected", "errors"):
        ids += read(split)
    return ids


def _local_ids(out: Path):
    def read(split: str) -> list[str]:
        return [i for p in sorted((out / split).glob("part-*.parquet")) for i in pq.read_table(p, columns=["id"])["id"].to_pylist()]
    return read


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_the_rerun_completes_exactly(clips, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as OUTPUT needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        out = disk / "out"
        import ray

        ray.shutdown()
        code = main(["run", str(clips), str(out), *_sets()])
        err = capsys.readouterr().err
        assert code == 3, err
        assert "No space left on device" in err and len(err.strip().splitlines()) <= 3
        assert not (out / "_SUCCESS").exists()
        written = _all_ids(_local_ids(out))
        assert len(written) < len(SENTENCES) and len(set(written)) == len(written)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert main(["run", str(clips), str(out), *_sets()]) == 0
        ids = _all_ids(_local_ids(out))
        assert sorted(ids) == sorted(f"c{i}" for i in range(len(SENTENCES)))  # none lost, none twice
        assert main(["verify", str(out)]) == 0
    finally:
        import ray

        ray.shutdown()
        subprocess.run(["umount", "-l", str(disk)])


class ResettingProxy:
    """A TCP proxy on loopback in front of the S3 server; `reset = True` makes it answer every
    new and open connection with a TCP reset, as a failing network does."""

    def __init__(self, upstream: str):
        host, port = upstream.split("//")[1].split(":")
        self.upstream = (host, int(port))
        self.reset = False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            if self.reset:
                self._rst(client)
                continue
            up = socket.create_connection(self.upstream)
            self.open += [client, up]
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self.reset:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                self._rst(s) if self.reset else s.close()

    @staticmethod
    def _rst(s: socket.socket) -> None:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        except OSError:
            pass

    def start_resetting(self) -> None:
        self.reset = True
        for s in list(self.open):
            self._rst(s)

    def close(self) -> None:
        self.server.close()


@pytest.mark.slow
def test_s3_that_resets_every_connection_fails_the_run_and_the_rerun_completes(clips, s3_server, capsys):
    import boto3
    import ray

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="flaky")
    proxy = ResettingProxy(s3_server)
    storage = [f"output.storage.endpoint_url=http://127.0.0.1:{proxy.port}", "output.storage.region=us-east-1"]
    ray.shutdown()
    # reset once the run has claimed the output and written its first shards
    def trip() -> None:
        while True:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="flaky", Prefix="run/").get("Contents", [])]
            if sum(k.endswith(".parquet") for k in keys) >= 2:
                proxy.start_resetting()
                return
            threading.Event().wait(0.05)
    tripper = threading.Thread(target=trip, daemon=True)
    tripper.start()
    code = main(["run", str(clips), "s3://flaky/run", *_sets(storage)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "Traceback" not in err
    ray.shutdown()

    def read(split: str) -> list[str]:
        ids = []
        for o in s3.list_objects_v2(Bucket="flaky", Prefix=f"run/{split}/").get("Contents", []):
            if o["Key"].endswith(".parquet") and "/.tmp-" not in o["Key"]:
                import io

                ids += pq.read_table(io.BytesIO(s3.get_object(Bucket="flaky", Key=o["Key"])["Body"].read()),
                                     columns=["id"])["id"].to_pylist()
        return ids

    partial = _all_ids(read)
    assert len(set(partial)) == len(partial) and len(partial) < len(SENTENCES)
    proxy.reset = False
    assert main(["run", str(clips), "s3://flaky/run", *_sets(storage)]) == 0, capsys.readouterr().err
    assert sorted(_all_ids(read)) == sorted(f"c{i}" for i in range(len(SENTENCES)))
    proxy.close()
    ray.shutdown()


from test_sources import s3_server  # noqa: E402,F401  a real S3 server on loopback
