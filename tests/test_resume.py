"""Resume and failures: SIGKILL at any moment, killed model actors, engines that keep dying,
rows that break a model call, a changed configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray._private import state as ray_state
from ray.core.generated import common_pb2

from audiocurate.config import PipelineConfig
from audiocurate.pipeline import RunFailed, run

from conftest import QUICK_MODELS, speak

SENTENCES = [
    "The sun is a star at the centre of our solar system.",
    "Okay see you tomorrow then.",
    "Copper is a good conductor of heat and electricity.",
    "I do not really like rainy days.",
    "The Pacific is the largest ocean on Earth.",
    "Let us get some pizza tonight.",
    "Plants need light to grow.",
]
SPLITS = ("curated", "rejected", "errors")
OVERRIDES = ["ray.progress=false", "output.rows_per_shard=2", "asr.resources.batch_size=2",
             "judge.resources.batch_size=2", *QUICK_MODELS]


@pytest.fixture(scope="module")
def clips_parquet(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("resume")
    rows = [{"id": f"c{i:02d}", "audio_bytes": speak(s, rate=16000, fmt="flac"), "sentence": s} for i, s in enumerate(SENTENCES)]
    rows.append({"id": "broken", "audio_bytes": b"not audio", "sentence": ""})
    # row groups of 3: a kill leaves groups finished, cut off and untouched (resume.py)
    pq.write_table(pa.Table.from_pylist(rows), d / "in.parquet", row_group_size=3)
    return d / "in.parquet"


def splits_of(out: Path) -> dict[str, list[str]]:
    res = {}
    for s in SPLITS:
        p = out / s
        res[s] = sorted(pq.read_table(p, columns=["id"])["id"].to_pylist()) if p.exists() else []
    return res


@pytest.fixture(scope="module")
def reference(clips_parquet, tmp_path_factory, ray_local) -> dict[str, list[str]]:
    """What one uninterrupted run writes."""
    out = tmp_path_factory.mktemp("ref") / "out"
    run(PipelineConfig.load(overrides=OVERRIDES), str(clips_parquet), str(out), echo=lambda s: None)
    return splits_of(out)


def _shards(out: Path, splits: tuple[str, ...] = SPLITS) -> int:
    return sum(len(list((out / s).glob("part-*.parquet"))) for s in splits if (out / s).exists())


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_exact(clips_parquet, reference, tmp_path, ray_local):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "audiocurate.cli", "run", str(clips_parquet), str(out),
           *[a for o in OVERRIDES for a in ("--set", o)]]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _shards(out) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    partial = splits_of(out)
    assert 0 < sum(map(len, partial.values())) < len(SENTENCES) + 1
    assert not (out / "_SUCCESS").exists()
    report = run(PipelineConfig.load(overrides=OVERRIDES), str(clips_parquet), str(out), echo=lambda s: None)
    assert report["accounting"]["ok"] and report["accounting"]["duplicates"] == 0
    assert splits_of(out) == reference
    assert report["timing"]["attempts"] == 2 and report["timing"]["interrupted_attempts"] == 1
    assert not list(out.rglob(".tmp-*")) and (out / "_SUCCESS").exists()


def _stage_actors(stage: str) -> dict[str, int]:
    """The pid of each actor of `stage` that has a process, by actor id, from Ray's actor table
    in the GCS: what `ray list actors` shows (`ray.util.state` asks the dashboard, which a local
    Ray started by `init_ray` runs without)."""
    return {actor_id: a["Pid"] for actor_id, a in ray_state.actors().items()
            if stage in a["ActorClassName"] and a["State"] != "DEAD" and a["Pid"]}


def _running_a_block(actor_ids) -> set[str]:
    """Those of `actor_ids` with a `submit` task (a block) started and not ended, from the task
    events the GCS keeps (what `ray list tasks` shows; each worker reports about once a second)."""
    seen: dict[tuple, set[int]] = {}
    for event in ray_state.state._get_all_task_events():
        info = event.task_info
        if info.func_or_class_name.endswith(".submit") and info.actor_id.hex() in actor_ids:
            key = (info.actor_id.hex(), event.task_id, event.attempt_number)
            seen.setdefault(key, set()).update(event.state_updates.state_ts_ns)
    ended = {common_pb2.FINISHED, common_pb2.FAILED}
    return {actor_id for (actor_id, *_), states in seen.items() if common_pb2.RUNNING in states and not states & ended}


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def _run_in_thread(config, src, out):
    result: dict = {}

    def target():
        try:
            result["report"] = run(config, str(src), str(out), echo=lambda s: None)
        except Exception as e:  # surfaced to the test
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result


@pytest.mark.slow
def test_killed_transcribe_actor_is_restarted_and_the_run_is_exact(clips_parquet, reference, tmp_path, ray_local):
    out = tmp_path / "out"
    t, result = _run_in_thread(PipelineConfig.load(overrides=OVERRIDES), clips_parquet, out)
    deadline = time.time() + 120
    # Kill the Whisper actors while they work: once they exist and a block reached them
    # (transcription is quick here, so waiting for output would find them already gone).
    victims: dict[str, int] = {}
    while not victims and t.is_alive() and time.time() < deadline:
        actors = _stage_actors("TranscribeStage")
        victims = {a: pid for a, pid in actors.items() if a in _running_a_block(actors)} if actors else {}
        time.sleep(0.1)
    assert victims, "no transcribe actor found running a block"
    assert all(_kill(pid) for pid in victims.values())
    t.join(600)
    assert not t.is_alive() and "error" not in result, result.get("error")
    assert result["report"]["accounting"]["ok"]
    assert splits_of(out) == reference
    assert all(ray_state.actors(a)["NumRestarts"] >= 1 for a in victims)  # the processes killed were those actors


@pytest.mark.slow
def test_engine_that_keeps_dying_stops_the_run_with_a_clear_message(clips_parquet, tmp_path, ray_local):
    out = tmp_path / "out"
    config = PipelineConfig.load(overrides=[*OVERRIDES, "ray.actor_max_restarts=1", "ray.actor_max_task_retries=1"])
    t, result = _run_in_thread(config, clips_parquet, out)
    kills = 0
    deadline = time.time() + 300
    while t.is_alive() and time.time() < deadline:
        kills += sum(_kill(pid) for pid in _stage_actors("TranscribeStage").values())
        time.sleep(0.5)
    t.join(60)
    assert not t.is_alive(), "the run hangs instead of stopping"
    err = result.get("error")
    assert isinstance(err, RunFailed), result
    assert "run the same command again to resume" in str(err) and "stopped" in str(err)
    assert kills >= 2


def test_row_that_breaks_the_judge_becomes_an_error_row(clips_parquet, tmp_path, ray_local):
    from audiocurate.config import LlamaCppJudgeConfig
    from audiocurate.judge import make_judge

    # n_ctx just over the prompt's prefix, measured in SmolLM2's tokens (its profile, pinned here)
    prefix = len(make_judge(LlamaCppJudgeConfig(profile="smollm2-135m-edu")).prefix_tokens)
    config = PipelineConfig.load(overrides=[*OVERRIDES, "judge.long_text=error", f"judge.n_ctx={prefix + 14}",
                                            "judge.profile=smollm2-135m-edu",
                                            "asr.language_id_model=null"])  # c00, the longest, reaches the judge
    report = run(config, str(clips_parquet), str(tmp_path / "out"), echo=lambda s: None, limit=4)
    assert report["accounting"]["ok"] and report["accounting"]["input"] == 4
    errors = pq.read_table(tmp_path / "out" / "errors").to_pylist()
    judge_errors = [e for e in errors if e["error_stage"] == "judge"]
    assert judge_errors and all("context" in e["error"] for e in judge_errors)
    assert report["error_stages"]["judge"] == len(judge_errors)


def test_limit_takes_the_same_rows_every_time_and_can_grow(clips_parquet, tmp_path, ray_local):
    config = PipelineConfig.load(overrides=OVERRIDES)
    r1 = run(config, str(clips_parquet), str(tmp_path / "out"), limit=3, echo=lambda s: None)
    assert r1["accounting"]["input"] == 3 and r1["accounting"]["ok"]
    first = [i for ids in splits_of(tmp_path / "out").values() for i in ids]
    assert sorted(first) == ["c00", "c01", "c02"]
    r2 = run(config, str(clips_parquet), str(tmp_path / "out"), limit=5, echo=lambda s: None)
    assert r2["accounting"]["input"] == 5 and r2["accounting"]["ok"]
    assert sorted(i for ids in splits_of(tmp_path / "out").values() for i in ids) == [f"c0{i}" for i in range(5)]


def test_restart_flag_starts_over(clips_parquet, tmp_path, ray_local):
    from audiocurate.run_state import OutputExistsError

    out = tmp_path / "out"
    run(PipelineConfig.load(overrides=OVERRIDES), str(clips_parquet), str(out), limit=1, echo=lambda s: None)
    other = PipelineConfig.load(overrides=[*OVERRIDES, "select.min_score=5"])
    with pytest.raises(OutputExistsError, match="--restart"):
        run(other, str(clips_parquet), str(out), limit=1, echo=lambda s: None)
    report = run(other, str(clips_parquet), str(out), limit=1, restart=True, echo=lambda s: None)
    assert report["accounting"]["ok"] and report["timing"]["attempts"] == 1
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="did not write"):
        run(other, str(clips_parquet), str(tmp_path / "foreign"), limit=1, echo=lambda s: None)
