"""Shared fixtures: real speech from espeak-ng, a real local Ray, the shipped demo dataset."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n`: each worker's Rays (its own and its commands') get their own temp folder, so a
    # worker's `session_latest` names only sessions it started (see `_unit_tests_leave_ray_alone`).
    os.environ.setdefault("RAY_TMPDIR", f"/tmp/ray-{os.environ['PYTEST_XDIST_WORKER']}-{os.getppid()}")
    os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)

HERE = Path(__file__).resolve().parent

# Fixtures that start Ray or run the pipeline end to end: a test that uses one, directly or
# through another fixture, is marked `e2e`, and `make test-fast` leaves it out. A module whose
# tests start Ray some other way opts in with `pytestmark = pytest.mark.e2e`.
E2E_FIXTURES = frozenset({"ray_local", "cluster"})
# Tests that start Ray without those fixtures, as `_unit_tests_leave_ray_alone` found them:
# planning a Ray Data dataset or building a ray.data.llm processor starts a local Ray, and so
# does the CLI's `run` called in the test's own process.
STARTS_RAY_ITSELF = frozenset({
    "test_backends.py::test_vllm_processor_is_built_with_rays_api",
    "test_backends.py::test_vllm_judge_takes_its_share_of_a_gpu",
    "test_runtime.py::test_split_blocks_reserves_what_it_is_given_not_a_whole_cpu",
    "test_output_commands.py::test_subcommands_reach_an_output_on_object_storage",
})

# Tests that check their logic on hours of synthetic audio or across fresh Python processes
# rather than on small arrays: `slow`, so that `make test-fast` stays a few minutes of unit tests
# (`make test` runs them). Other such tests carry `@pytest.mark.slow` themselves.
SLOW_BY_DATA_OR_PROCESSES = frozenset({
    *(f"test_long_clip_memory.py::{name}" for name in (  # two hours of FLAC, decoded in full
        "test_a_long_silent_clip_is_measured_without_keeping_its_samples",
        "test_a_long_clip_that_is_wanted_is_decoded_again_exactly",
        "test_a_clip_longer_than_the_limit_is_refused_by_its_header_before_decoding",
        "test_the_preview_decodes_only_the_seconds_it_plays",
        "test_the_report_plays_a_rejected_two_hour_clip_without_decoding_it_whole",
        "test_the_decode_filters_verdict_on_measures_alone",
        "test_the_decode_stage_rejects_a_long_silent_clip_without_holding_it",
        "test_the_decode_stage_rejects_a_clip_over_the_limit_as_too_long")),
    "test_output_lease.py::test_two_processes_racing_for_one_output_get_one_lease",  # three interpreters
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())) or name in STARTS_RAY_ITSELF:
            item.add_marker(pytest.mark.e2e)
        if name in SLOW_BY_DATA_OR_PROCESSES:
            item.add_marker(pytest.mark.slow)


# Overrides for a run whose test is about plumbing (sources, resume, accounting, exports), not
# about languages or transcript quality: they leave out the multilingual language-ID model
# (whisper-base) that every ASR actor loads and runs beside tiny.en by default, about 11 s of
# CPU per actor on seven short clips, and decode greedily (tiny.en with beam 1 takes 0.42 of
# beam 5's time on the demo's clips). A test of languages or of the demo's figures must not use
# them. (The Gemma judge costs about what SmolLM2 does, so it stays.)
QUICK_MODELS = ("asr.language_id_model=null", "asr.beam_size=1")


_RAY_BEFORE_SETUP = pytest.StashKey[tuple]()
_LEFT_OUT_OF_TEST_FAST = ("e2e", "slow", "cluster")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.stash[_RAY_BEFORE_SETUP] = _ray_state()  # before any fixture this test sets up, module ones too
    yield


@pytest.fixture(autouse=True)
def _unit_tests_leave_ray_alone(request):
    """Fails a test that `make test-fast` runs (not e2e, slow or cluster) if it started Ray, in
    this process or in a command it ran, in a fixture or in its body: it would make
    `make test-fast` slow again without anyone noticing."""
    yield
    if any(request.node.get_closest_marker(m) for m in _LEFT_OUT_OF_TEST_FAST):
        return
    (was_running, old_session), (running, session) = request.node.stash[_RAY_BEFORE_SETUP], _ray_state()
    if (running and not was_running) or (session != old_session and not _started_by_another_live_process(session)):
        if running and not was_running:
            sys.modules["ray"].shutdown()  # so that the next test that starts one is caught too
        pytest.fail(f"{request.node.nodeid} started Ray (session {session}) but is not marked e2e: use the "
                    f"ray_local fixture, or mark it with pytest.mark.e2e", pytrace=False)


def _ray_state() -> tuple[bool, str | None]:
    """Whether this process has a Ray, and the newest Ray session on this machine (any process
    that starts Ray links it as `session_latest` in Ray's temporary folder)."""
    ray = sys.modules.get("ray")  # not imported: not started here
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    try:
        session = os.readlink(os.path.join(temp, "ray", "session_latest"))
    except OSError:
        session = None
    return ray is not None and ray.is_initialized(), session


def _started_by_another_live_process(session: str | None) -> bool:
    """Whether a Ray session was started by a process that still runs and is neither this one
    nor one it started: another user's run or benchmark on this machine, not this test's (the
    session's folder ends with its starter's pid). A starter that has exited counts as this
    test's: a command the test ran and waited for."""
    import psutil

    try:
        pid = int(session.rsplit("_", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return False
    ours = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    return pid not in ours and psutil.pid_exists(pid)


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


def speak(text: str, *, voice: str = "en-us", rate: int = 16000, fmt: str = "flac", channels: int = 1,
          speed: int = 160, subtype: str | None = None) -> bytes:
    """Real speech as encoded bytes: espeak-ng, then sox/ffmpeg to the wanted rate and codec."""
    if not have("espeak-ng"):
        pytest.skip("espeak-ng is not installed (make sysdeps)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, text], check=True)
        audio, sr = sf.read(raw, dtype="float32")
        return encode(audio * 0.9, sr, rate=rate, fmt=fmt, channels=channels, subtype=subtype)


def encode(audio: np.ndarray, sr: int, *, rate: int, fmt: str, channels: int = 1, subtype: str | None = None) -> bytes:
    """Resample with sox, then encode with soundfile (wav/flac/ogg/mp3) or ffmpeg (others)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "src.wav"), os.path.join(tmp, "dst.wav")
        sf.write(src, audio, sr, subtype="FLOAT")
        subprocess.run(["sox", "-V1", src, "-r", str(rate), "-c", str(channels), "-b", "32", "-e", "floating-point",
                        dst, "rate", "-v"], check=True)
        data, _ = sf.read(dst, dtype="float32", always_2d=True)
        if fmt in ("wav", "flac", "ogg", "mp3"):
            buf = io.BytesIO()
            kwargs = {"format": {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}[fmt]}
            kwargs["subtype"] = subtype or {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}[fmt]
            sf.write(buf, data, rate, **kwargs)
            return buf.getvalue()
        out = os.path.join(tmp, f"out.{fmt}")
        codec = {"opus": ["-c:a", "libopus"], "m4a": ["-c:a", "aac"], "webm": ["-c:a", "libopus"]}[fmt]
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", dst, *codec, out], check=True)
        return Path(out).read_bytes()


@pytest.fixture(scope="session")
def demo_parquet() -> str:
    from audiocurate.cli import demo_dataset_path

    return demo_dataset_path()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (2 CPUs, like CI)."""
    import ray

    from audiocurate.config import RayConfig
    from audiocurate.runtime import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(RayConfig(num_cpus=2, progress=False))
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_config():
    """Default pipeline configuration, quiet."""
    from audiocurate.config import PipelineConfig

    return PipelineConfig.load(overrides=["ray.progress=false", "ray.num_cpus=2"])


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """An English-only Whisper with random weights and tiny.en's real tokenizer (tiny_whisper.py)."""
    import tiny_whisper

    return tiny_whisper.build_english(str(tmp_path_factory.mktemp("tiny-whisper")))


@pytest.fixture(scope="module")
def llama_server():
    """SmolLM2 behind llama.cpp's OpenAI-compatible server on loopback (for the HTTP judge)."""
    import socket
    import subprocess
    import time
    import urllib.request

    from audiocurate.models import resolve_model

    pytest.importorskip("llama_cpp.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", resolve_model("embedded:smollm2-135m"),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--logits_all", "true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=1)
                break
            except Exception:
                time.sleep(0.5)
        else:
            pytest.fail("llama.cpp server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
