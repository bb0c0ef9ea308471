"""Before a run: load each native engine in a subprocess on every node and run it on one row.

An engine that cannot run on a machine (a native build for another CPU) then fails in seconds,
with its exit signal named, instead of inside Ray actors that are restarted three times.
Passing probes are cached per node in `~/.cache/audiocurate/probes`, keyed by the engine's
versions and builds, the stage's settings, the model file and the CPU's flags: a run on a machine
that passed before pays one Ray task per node.

    python -m audiocurate.probe '{"stage": "judge", "backend": "llama_cpp", ...}'   # one probe
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .engines import EngineCrashed, engine_of, installed_version

if TYPE_CHECKING:
    from .config import PipelineConfig

log = logging.getLogger(__name__)

# The model stages and how to build their engine from the stage's own config slice.
FACTORIES = {"asr": "audiocurate.asr:make_transcriber", "judge": "audiocurate.judge:make_judge"}
PROBE_TEXT = "The heart pumps blood through the arteries to every part of the body."


class EngineProbeFailed(RuntimeError):
    """An engine raised (rather than died) while loading or running one row."""


@dataclass(frozen=True)
class ProbeSpec:
    stage: str  # "asr" or "judge"
    backend: str
    config: dict[str, Any]  # the stage's configuration (AsrConfig / JudgeConfig as JSON)
    factory: str  # "module:function" building the engine from that configuration
    timeout_s: float = 300.0

    def cache_key(self) -> str:
        """Everything that decides whether a passing probe still holds on this node."""
        engine = engine_of(self.stage, self.backend)
        facts = {
            "spec": {k: v for k, v in asdict(self).items() if k != "timeout_s"},
            "versions": {d: installed_version(d) for d in engine.distributions},
            "builds": {d: _build_stamp(d) for d in engine.distributions},
            "model": _model_stamp(self.config.get("model")),
            "cpu": _cpu_flags(),
            "python": sys.executable,
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class ProbeResult:
    stage: str
    backend: str
    node: str
    ok: bool
    seconds: float
    cached: bool = False
    signal: Optional[int] = None  # the signal the engine's process died from
    error: str = ""


def probe_specs(config: "PipelineConfig") -> list[ProbeSpec]:
    """The stages of this configuration whose engine is native code on this machine's CPU."""
    specs = []
    for stage, section in (("asr", config.asr), ("judge", config.judge)):
        if engine_of(stage, section.backend).native:
            data = section.model_dump(mode="json")
            data.pop("resources", None)
            specs.append(ProbeSpec(stage, section.backend, data, FACTORIES[stage],
                                   config.ray.probe_timeout_s))
    return specs


def run_probe(spec: ProbeSpec, env: Optional[dict[str, str]] = None) -> ProbeResult:
    """One probe in a fresh subprocess, with `env` added to this process's variables (those
    Ray's workers get); its exit status tells a signal from an error."""
    t0 = time.time()
    env = {**os.environ, **(env or {})}
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.run([sys.executable, "-m", "audiocurate.probe", json.dumps(asdict(spec))],
                              capture_output=True, text=True, timeout=spec.timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return ProbeResult(spec.stage, spec.backend, socket.gethostname(), False, time.time() - t0,
                           error=f"no answer within {spec.timeout_s:.0f} s (ray.probe_timeout_s)")
    result = ProbeResult(spec.stage, spec.backend, socket.gethostname(), proc.returncode == 0, time.time() - t0)
    if proc.returncode < 0:
        result.signal = -proc.returncode
    elif proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        result.error = lines[-1] if lines else f"exit status {proc.returncode}"
    return result


def check_node(specs: list[ProbeSpec], use_cache: bool = True, cache_dir: Optional[str] = None,
               env: Optional[dict[str, str]] = None) -> list[ProbeResult]:
    """All probes of one node, in parallel; passing ones are cached on this node."""
    cache = Path(cache_dir) if cache_dir else _cache_dir()
    results: list[Optional[ProbeResult]] = [None] * len(specs)
    todo = []
    for i, spec in enumerate(specs):
        marker = cache / f"{spec.stage}-{spec.backend}-{spec.cache_key()}.json"
        if use_cache and marker.exists():
            results[i] = ProbeResult(spec.stage, spec.backend, socket.gethostname(), True, 0.0, cached=True)
        else:
            todo.append((i, spec, marker))
    if todo:
        with ThreadPoolExecutor(len(todo)) as pool:
            for (i, spec, marker), result in zip(todo, pool.map(lambda t: run_probe(t[1], env), todo)):
                results[i] = result
                if result.ok:
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(json.dumps(asdict(result)))
    return [r for r in results if r is not None]


def check_engines(config: "PipelineConfig", *, specs: Optional[list[ProbeSpec]] = None,
                  use_cache: bool = True, cache_dir: Optional[str] = None) -> list[ProbeResult]:
    """Probe every engine on every alive Ray node; raise on the first that fails.

    `cache_dir`: where nodes keep passing probes (default: each node's ~/.cache/audiocurate/probes).
    Raises `EngineCrashed` (died from a signal) or `EngineProbeFailed` (raised an error)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .plan import cpu_nodes
    from .runtime import own_node_id, worker_environment

    specs = probe_specs(config) if specs is None else specs
    if not specs:
        return []
    remote = ray.remote(num_cpus=0, max_retries=0)(check_node)
    here = own_node_id()  # a local Ray's node is this machine: its probes run here, without a task
    nodes = [n for n in cpu_nodes() if n["NodeID"] != here]
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(specs, use_cache, cache_dir) for n in nodes]
    results: list[ProbeResult] = []
    if here is not None:
        results.extend(check_node(specs, use_cache, cache_dir, env=worker_environment(config.ray)))
    for node, ref in zip(nodes, refs):
        try:
            results.extend(ray.get(ref))
        except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError) as e:
            # A node that died just before the run can still be listed alive for a while;
            # nothing will be scheduled there, so there is nothing to probe.
            log.warning("engine probe skipped node %s, which is gone: %s", _node_address(node), type(e).__name__)
    raise_for(results)
    return results


def _node_address(node: dict[str, Any]) -> str:
    return str(node.get("NodeManagerAddress") or node.get("NodeID"))


def raise_for(results: list[ProbeResult]) -> None:
    for r in results:
        if r.signal is not None:
            raise EngineCrashed.of(r.stage, r.backend, r.signal,
                                where=f"while loading its model and running one row on {r.node} (engine probe)")
        if not r.ok:
            engine = engine_of(r.stage, r.backend)
            raise EngineProbeFailed(f"{r.stage}: {engine.name} failed its probe on {r.node} "
                                    f"(loading its model and running one row): {r.error}")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "audiocurate" / "probes"


def _model_stamp(model: Optional[str]) -> Any:
    if not model:
        return None
    try:
        from .models import resolve_model

        path = Path(resolve_model(model))
    except Exception as e:  # the probe itself will report it
        return f"unresolved: {e}"
    if not path.exists():
        return model
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in files]


def _build_stamp(distribution: str) -> Optional[str]:
    """What the installed files of `distribution` are, from the hashes its RECORD lists: a wheel
    built again at the same version (other flags, other CPU levels) is another build to probe."""
    from importlib import metadata

    try:
        record = metadata.distribution(distribution).read_text("RECORD") or ""
    except metadata.PackageNotFoundError:
        return None
    return hashlib.sha256(record.encode()).hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return hashlib.sha256(line.encode()).hexdigest()[:16]
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _probe_in_this_process(spec: dict[str, Any]) -> None:
    """The subprocess's work: build the engine as an actor would, then one row."""
    import numpy as np

    from pydantic import TypeAdapter

    from .config import AsrConfig, JudgeConfig

    module, _, name = spec["factory"].partition(":")
    factory = getattr(importlib.import_module(module), name)
    section = TypeAdapter({"asr": AsrConfig, "judge": JudgeConfig}[spec["stage"]]).validate_python(spec["config"])
    engine = factory(section)
    if spec["stage"] == "asr":
        noise = (np.random.default_rng(0).standard_normal(16000) * 300).astype(np.int16)
        engine.transcribe_batch([noise])
    else:
        # A row the engine refuses (too long for a small `n_ctx`) is an error row in a run, not
        # a broken engine: the probe is about loading and computing, so it passes.
        engine.score_batch([PROBE_TEXT])


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        _probe_in_this_process(json.loads(argv[0]))
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
