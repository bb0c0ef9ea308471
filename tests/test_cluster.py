"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`),
the pipeline submitted to it with `--address`, and the worker node killed mid-run."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import have, speak

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SENTENCES = [f"Number {w} is a small number that comes after {p}." for p, w in
             zip(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"],
                 ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """Head (1 CPU) and worker (2 CPUs) on loopback, with Ray's token auth shared by all.

    The cluster keeps its own temp dir, so teardown ends exactly its processes: `ray stop`
    would end every Ray on the machine, this test process's local one included.
    """
    import ray

    if ray.is_initialized():  # free the two cores for the cluster; later tests start a fresh local Ray
        ray.shutdown()
    ray_bin = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    temp_dir = f"/tmp/ac-cluster-{secrets.token_hex(4)}"  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    worker_nm_port = _free_port()
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1", f"--temp-dir={temp_dir}", "--include-dashboard=false",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True)
        subprocess.run([str(ray_bin), "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                        f"--node-manager-port={worker_nm_port}", "--disable-usage-stats"], env=env, check=True,
                       capture_output=True)
        yield address, env, worker_nm_port
    finally:
        _kill_node(worker_nm_port)  # already dead when the test got that far
        _kill_matching(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _kill_matching(text: str) -> int:
    """SIGKILL every process whose command line mentions `text`, children first."""
    killed = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            if text in " ".join(p.info["cmdline"] or []):
                for child in p.children(recursive=True) + [p]:
                    child.send_signal(signal.SIGKILL)
                    killed += 1
        except psutil.NoSuchProcess:
            pass
    return killed


def _kill_node(node_manager_port: int) -> int:
    """SIGKILL the worker node's raylet and every process it started."""
    killed = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in cmd and f"--node_manager_port={node_manager_port}" in cmd:
            for child in p.children(recursive=True) + [p]:
                try:
                    child.send_signal(signal.SIGKILL)
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
    return killed


def test_worker_node_dies_mid_run_and_the_output_is_exact(cluster, tmp_path):
    address, env, worker_port = cluster
    rows = [{"id": f"n{i:02d}", "audio_bytes": speak(s, rate=48000, fmt="flac"), "sentence": s}
            for i, s in enumerate(SENTENCES)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "audiocurate.cli", "run", str(tmp_path / "in.parquet"), str(out), "--address", address,
           "--no-progress", "--set", "output.rows_per_shard=2", "--set", "asr.resources.concurrency=2",
           "--set", "asr.language_id_model=null"]  # language ID is not under test
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if sum(len(list((out / s).glob("part-*.parquet"))) for s in ("curated", "rejected") if (out / s).exists()) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    assert _kill_node(worker_port) > 0
    # Right after a node dies Ray can still list it alive: the engine probe of a run started
    # now must skip it, not fail on it (a rerun did, before).
    probe = subprocess.run(
        [sys.executable, "-c", "import ray, sys; from audiocurate.config import PipelineConfig; "
         "from audiocurate.probe import check_engines; ray.init(address=sys.argv[1], logging_level='ERROR'); "
         "print('probed', len(check_engines(PipelineConfig())))", address],
        env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0 and "probed" in probe.stdout, probe.stderr[-3000:]
    log, _ = proc.communicate(timeout=900)
    if proc.returncode != 0:  # the run may stop when its node goes; a rerun must complete it
        assert "run the same command again to resume" in log, log[-3000:]
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    ids = []
    for s in ("curated", "rejected", "errors"):
        if (out / s).exists():
            ids += pq.read_table(out / s, columns=["id"])["id"].to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in rows), "rows lost or duplicated"
    assert (out / "_SUCCESS").exists()
