"""An engine's fault is never written down as its rows' fault.

The rule (`core.faults`) on Arrow tables without Ray; then real local-Ray runs of the pipeline
with a judge whose engine fails for a while (it costs no row) or for good (the run stops naming
stage and engine, writes no error row for the rows it could not judge, and a rerun finishes
them); then the processor judges: no request for a settled row, and the HTTP judge's token in
no pickled object while it still authenticates."""

from __future__ import annotations

import functools
import json
import os
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import crashing_engine
from audiocurate import contract as C
from audiocurate.config import PipelineConfig
from audiocurate.core.faults import EngineFault, classify_failures, engine_fault_message, is_fatal
from audiocurate.judge import JudgeScore
from audiocurate.stages import JudgeStage
from audiocurate.verify import retryable_error_stages

SPLITS = ("curated", "rejected", "errors")


# ---- the rule, on Arrow tables ------------------------------------------------------------
class Engine:
    """A judge engine that answers by a function of the batch; counts its calls."""

    model_name = "stand-in"

    def __init__(self, answer, log: list):
        self.answer, self.log = answer, log
        log.append("load")

    def score_batch(self, texts):
        self.log.append(list(texts))
        return self.answer(list(texts), self.log.count("load"))


def judge_stage(answer, retries: int = 2, batch_size: int = 4):
    """A `JudgeStage` whose engine is `Engine(answer)`, loaded anew each time the stage loads it."""
    log: list = []

    class Stage(JudgeStage):
        @functools.cached_property
        def judge(self):
            return Engine(answer, log)

    config = PipelineConfig.load(overrides=[f"judge.resources.batch_size={batch_size}"]).judge
    return Stage(config, engine_fault_retries=retries, engine_fault_backoff_s=0.0), log


def texts_table(texts, drops=None) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(len(texts))], "transcript": texts,
                     C.DROP_REASON: drops or [None] * len(texts)})


def scores(texts):
    return [JudgeScore(4, 3.9, [0.0, 0.1, 0.1, 0.7, 0.1]) for _ in texts]


def test_a_transient_engine_fault_is_tried_again_with_a_fresh_engine_and_costs_no_row():
    def answer(texts, loads):
        if loads == 1:  # the first engine's GPU ran out of memory
            raise crashing_engine.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return scores(texts)

    stage, log = judge_stage(answer)
    rows = stage(texts_table(["a", "b", "c", "d", "e"])).to_pylist()
    assert [r[C.ERROR_STAGE] for r in rows] == [None] * 5 and [r["edu_score"] for r in rows] == [4] * 5
    assert log.count("load") == 2, log  # the fatal error was not run row by row into the broken engine


def test_an_engine_fault_that_stays_fails_the_block_naming_stage_and_engine():
    stage, log = judge_stage(lambda texts, loads: (_ for _ in ()).throw(ConnectionRefusedError(111, "refused")))
    with pytest.raises(EngineFault) as err:
        stage(texts_table(["a", "b", "c"]))
    assert str(err.value).startswith("judge: llama.cpp: the engine failed, not the rows (ConnectionRefusedError")
    assert "3 tries" in str(err.value) and log.count("load") == 4  # 3 tries, then each row alone on a fresh one
    assert engine_fault_message(f"ray.exceptions.RayTaskError(UserCodeException): ...\n"
                                f"audiocurate.core.faults.EngineFault: {err.value}\n") == str(err.value)
    assert pickle.loads(pickle.dumps(err.value)).args == err.value.args  # Ray sends it back to the driver


def test_every_row_of_a_batch_failing_alone_the_same_way_is_the_engines_fault():
    def answer(texts, loads):
        raise ValueError("llama_decode returned -3")  # no fatal kind, but no row is to blame either

    stage, log = judge_stage(answer, retries=1)
    with pytest.raises(EngineFault, match=r"every one of 4 rows failed alone with ValueError: llama_decode returned -3"):
        stage(texts_table(["a", "b", "c", "d"]))
    assert log.count("load") == 3


def test_one_row_that_always_breaks_the_engine_does_not_stop_the_run():
    """A clip or prompt too large for the GPU raises out-of-memory whenever it is in the batch:
    after the tries, each row alone on a fresh engine; the others are scored, it is an error row."""
    def answer(texts, loads):
        if "huge" in texts:
            raise crashing_engine.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return scores(texts)

    stage, log = judge_stage(answer, retries=1)
    rows = stage(texts_table(["a", "huge", "c"])).to_pylist()
    assert [r[C.ERROR_STAGE] for r in rows] == [None, "judge", None]
    assert "OutOfMemoryError" in rows[1][C.ERROR] and [rows[0]["edu_score"], rows[2]["edu_score"]] == [4, 4]


def test_a_row_that_fails_alone_is_still_its_own_error_row():
    def answer(texts, loads):
        if any(t.startswith("bad") for t in texts):
            raise ValueError(f"cannot score {texts}")
        return scores(texts)

    stage, log = judge_stage(answer)
    rows = stage(texts_table(["a", "bad1", "c", "bad2", "e"], drops=[None, None, None, None, "silence"])).to_pylist()
    assert [r[C.ERROR_STAGE] for r in rows] == [None, "judge", None, "judge", None]
    assert "cannot score ['bad1']" in rows[1][C.ERROR] and "cannot score ['bad2']" in rows[3][C.ERROR]
    assert rows[4]["judge_s"] is None and log.count("load") == 1


def test_a_lone_row_failing_with_no_fatal_kind_is_its_error_row():
    """The ambiguous case: one row, one failure of no fatal kind. It is the row's error, in a
    stage whose errors `--retry-errors` may run again."""
    stage, _ = judge_stage(lambda texts, loads: (_ for _ in ()).throw(ValueError("unreadable transcript")))
    (row,) = stage(texts_table(["a"])).to_pylist()
    assert row[C.ERROR_STAGE] == "judge" and "unreadable transcript" in row[C.ERROR]
    assert row[C.ERROR_STAGE] in retryable_error_stages()


def test_only_model_stages_errors_are_retryable():
    assert retryable_error_stages() == frozenset({"transcribe", "judge"})


def test_every_stage_that_says_its_errors_are_retryable_is_listed():
    """`verify.retryable_error_stages` names the stage classes by hand: a stage added anywhere in
    the package with `retryable_errors` and not listed there fails here."""
    import importlib
    import pkgutil

    import audiocurate
    from audiocurate.core.stage import Stage

    for module in pkgutil.walk_packages(audiocurate.__path__, "audiocurate."):
        try:
            importlib.import_module(module.name)
        except ImportError as e:  # an optional engine that is not installed (vllm): none of its stages is used
            assert module.name.split(".")[1] in {"asr", "judge", "exports", "sources"}, (module.name, e)

    def subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    said = {c.name for c in subclasses(Stage) if c.retryable_errors and c.name and c.__module__.startswith("audiocurate.")}
    assert said and said <= retryable_error_stages(), said - retryable_error_stages()


@pytest.mark.parametrize("error", [
    MemoryError(), crashing_engine.OutOfMemoryError("Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA failed with error out of memory"), ConnectionRefusedError(111, "Connection refused"),
    TimeoutError(), RuntimeError("the engine crashed"), EngineFault("judge", "vLLM", "x", 1),
])
def test_fatal_kinds_are_the_engines_wherever_they_are_raised(error):
    assert is_fatal(error)
    assert classify_failures([error]) is not None
    assert classify_failures([JudgeScore(4, 3.9), error]) is not None


def test_aiohttp_connection_errors_are_fatal():
    aiohttp = pytest.importorskip("aiohttp")
    assert is_fatal(aiohttp.ServerDisconnectedError())


@pytest.mark.parametrize("results", [
    [ValueError("prompt too long")],  # one row alone: its own
    [ValueError("corrupt clip r1"), ValueError("corrupt clip r2")],  # different messages: each row's own
    [ValueError("x"), JudgeScore(4, 3.9)],  # one row of two
    [FileNotFoundError("no such file")],
])
def test_row_faults_are_the_rows(results):
    assert not any(is_fatal(r) for r in results if isinstance(r, BaseException))
    assert classify_failures(results) is None


# ---- real runs on a local Ray ---------------------------------------------------------------
def judge_stage_in_place(monkeypatch, stage: type) -> None:
    """`stage` (a `stages.JudgeStage` of a test engine) as the stage the planner gives an actor judge."""
    from audiocurate import plan

    planned = plan.engine_stage
    monkeypatch.setattr(plan, "engine_stage", lambda section: stage if section == "judge" else planned(section))


@pytest.fixture
def flaky_judge(monkeypatch, tmp_path, ray_local):
    """Puts a `FlakyJudge` in place of the judge's engine for the runs of this test; returns a
    function of the number of failures (None: for good) and the folder of its token files."""
    import ray

    from audiocurate.config import RayConfig
    from audiocurate.runtime import init_ray

    init_ray(RayConfig(num_cpus=2, progress=False))  # an earlier module may have stopped the session's Ray
    ray.cloudpickle.register_pickle_by_value(crashing_engine)  # Ray's workers cannot import tests/
    tokens = tmp_path / "tokens"

    def install(failures):
        judge_stage_in_place(monkeypatch, crashing_engine.flaky_judge_stage(str(tokens), failures))
        return tokens

    return install


@pytest.fixture(scope="module")
def clean_demo(tmp_path_factory, demo_parquet) -> tuple[str, int]:
    """The demo's rows that decode and speak (no row of it is an error on a healthy run)."""
    table = pq.read_table(demo_parquet)
    keep = [not (label.startswith("broken") or label == "silence") for label in table["demo_label"].to_pylist()]
    path = tmp_path_factory.mktemp("clean-demo") / "demo.parquet"
    pq.write_table(table.filter(pa.array(keep)), path)
    return str(path), sum(keep)


def fast_config(**extra) -> PipelineConfig:
    """The demo's transcripts as the input has them (no Whisper), a judge stood in for: the
    runs here are about the judge's faults, in seconds."""
    return PipelineConfig.load(overrides={"ray.progress": False, "ray.num_cpus": 2, "ray.probe_engines": False,
                                          "asr.backend": "none", "asr.text_column": "sentence",
                                          "ray.engine_fault_backoff_s": 0.1, "output.compact_mb": None, **extra})


def outputs(out) -> dict[str, list[dict]]:
    return {s: pq.read_table(out / s).to_pylist() if (out / s).exists() else [] for s in SPLITS}


def test_a_judge_that_fails_for_a_while_loses_no_row(flaky_judge, clean_demo, tmp_path):
    from audiocurate.pipeline import run

    path, n = clean_demo
    tokens = flaky_judge(failures=2)
    out = tmp_path / "out"
    report = run(fast_config(), path, str(out), echo=lambda s: None)
    rows = outputs(out)
    assert report["accounting"]["ok"] and report["accounting"]["errors"] == 0 and not rows["errors"]
    assert len(rows["curated"]) + len(rows["rejected"]) == n
    assert all(r["judge_model"] == "flaky-judge" and r["edu_score"] in (2, 4) for r in rows["curated"])
    assert len(list(tokens.glob("failure-*"))) == 2  # the engine did fail, twice
    assert len(list(tokens.glob("load-*"))) >= 3  # and was loaded anew after each failure


def test_a_judge_that_keeps_failing_stops_the_run_without_error_rows_and_a_rerun_finishes(flaky_judge, clean_demo,
                                                                                        tmp_path):
    from audiocurate.pipeline import RunFailed, run

    path, n = clean_demo
    flaky_judge(failures=None)
    out = tmp_path / "out"
    with pytest.raises(RunFailed) as err:
        run(fast_config(**{"ray.engine_fault_retries": 1}), path, str(out), echo=lambda s: None)
    expected = "judge: llama.cpp: the engine failed, not the rows (OutOfMemoryError: CUDA out of memory"
    assert engine_fault_message(str(err.value.__cause__)).startswith(expected)  # Ray's wrapping, unwrapped
    assert f"the run stopped: {expected}" in str(err.value), str(err.value)  # pipeline.explain_failure says it
    first = outputs(out)
    assert not first["errors"], "an engine's fault was written as error rows"
    assert not first["curated"] and not first["rejected"]  # no row was judged

    flaky_judge(failures=0)  # the engine works again
    report = run(fast_config(**{"ray.engine_fault_retries": 1}), path, str(out), echo=lambda s: None)
    rows = outputs(out)
    ids = [r["id"] for s in SPLITS for r in rows[s]]
    assert report["accounting"]["ok"] and not rows["errors"]
    assert sorted(ids) == sorted(pq.read_table(path)["id"].to_pylist()) and len(ids) == n  # each row once


# ---- processor judges: no request for a settled row; the HTTP token stays in the worker -------
TOKEN = "tok-3d1f-not-for-pickles"
TOKEN_ENV = "AUDIOCURATE_TEST_JUDGE_TOKEN"


class StandInServer:
    """An OpenAI-compatible completions server on the loopback: answers "4" with log-probabilities
    to any request that brings the bearer token, 401 to others; records every request."""

    def __init__(self):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization")
                server.requests.append({"auth": auth, "prompt": body.get("prompt", "")})
                if auth != f"Bearer {TOKEN}":
                    self._send(401, {"error": {"message": "unauthorized", "code": 401}})
                    return
                tops = {"4": -0.2, "3": -1.9, "5": -3.0, "1": -6.0, "2": -5.0}
                self._send(200, {"choices": [{"text": "4", "logprobs": {"top_logprobs": [tops]}}]})

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/completions"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def http_config(url: str) -> PipelineConfig:
    return PipelineConfig.load(overrides=["judge.backend=http", f"judge.url={url}", f"judge.api_key_env={TOKEN_ENV}",
                                          "judge.max_retries=0", "judge.resources.batch_size=4"])


def test_the_http_judges_token_is_in_no_object_ray_pickles(monkeypatch, ray_local):
    import ray.cloudpickle as cloudpickle

    from audiocurate.judge.processors import build_judge_processor

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    config = http_config("http://127.0.0.1:9/v1/completions")
    assert TOKEN_ENV in config.ray.forward_env  # the workers get the variable; the config holds its name only
    processor, _ = build_judge_processor(config, 1)
    built = [processor, processor.config, config, *processor.stages.values()]
    built += [s.get_dataset_map_batches_kwargs(4, "__data") for s in processor.stages.values()]
    for obj in built:
        assert TOKEN.encode() not in cloudpickle.dumps(obj), type(obj).__name__
    assert TOKEN.encode() not in pickle.dumps(config)
    with pytest.raises(ValueError, match=f"judge.api_key_env='{TOKEN_ENV}' is not set"):
        monkeypatch.delenv(TOKEN_ENV)
        build_judge_processor(config, 1)


@pytest.fixture
def ray_with_token(ray_local, monkeypatch):
    """A local Ray started with the token in the environment, as `audiocurate run` starts one
    after the user exported it; the session's Ray is started again after."""
    import ray

    from audiocurate.config import RayConfig
    from audiocurate.runtime import init_ray

    ray.shutdown()
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    init_ray(RayConfig(num_cpus=2, progress=False, forward_env=[TOKEN_ENV]))
    yield ray
    ray.shutdown()
    monkeypatch.delenv(TOKEN_ENV)
    init_ray(RayConfig(num_cpus=2, progress=False))


def test_the_http_judge_authenticates_and_sends_no_request_for_settled_rows(ray_with_token):
    import ray

    from audiocurate.plan import judge_steps
    from audiocurate.runtime import apply_steps

    server = StandInServer()
    try:
        rows = [{"id": f"ok{i}", "transcript": f"Water boils at {i} degrees.", "error_stage": None, "error": None,
                 "drop_reason": None} for i in range(5)]
        rows += [{"id": "broken", "transcript": "never sent: broken", "error_stage": "decode",
                  "error": "not audio", "drop_reason": None},
                 {"id": "quiet", "transcript": "never sent: quiet", "error_stage": None, "error": None,
                  "drop_reason": "silence"}]
        ds = apply_steps(ray.data.from_items(rows), judge_steps(http_config(server.url), 1))
        assert TOKEN.encode() not in ray.cloudpickle.dumps(ds)
        out = {r["id"]: r for r in ds.take_all()}
    finally:
        server.close()
    assert set(out) == {r["id"] for r in rows}
    for i in range(5):
        assert out[f"ok{i}"]["error_stage"] is None and out[f"ok{i}"]["edu_score"] == 4, out[f"ok{i}"].get("error")
    assert len(server.requests) == 5 and all(r["auth"] == f"Bearer {TOKEN}" for r in server.requests)
    assert not any("never sent" in r["prompt"] for r in server.requests)
    assert out["broken"]["error_stage"] == "decode" and out["broken"]["error"] == "not audio"
    assert out["quiet"]["drop_reason"] == "silence" and out["quiet"]["edu_score"] is None
    assert "__inference_error__" not in out["quiet"]


def test_retry_errors_runs_the_rows_an_engine_refused_again_and_only_those(monkeypatch, clean_demo, tmp_path,
                                                                           ray_local):
    import ray

    from audiocurate.pipeline import run

    ray.cloudpickle.register_pickle_by_value(crashing_engine)
    path, n = clean_demo
    texts = pq.read_table(path, columns=["sentence"])["sentence"].to_pylist()
    marker = " the "
    refused = sum(marker in t for t in texts)
    assert 0 < refused < n  # some rows, not all
    flag = tmp_path / "refusing"
    flag.touch()
    judge_stage_in_place(monkeypatch, crashing_engine.picky_judge_stage(str(flag), marker))
    out = tmp_path / "out"
    config = fast_config(**{"output.rows_per_shard": 2, "judge.resources.batch_size": 2})
    first = run(config, path, str(out), echo=lambda s: None)
    rows = outputs(out)
    assert first["accounting"]["ok"] and len(rows["errors"]) == refused
    assert {r["error_stage"] for r in rows["errors"]} == {"judge"}
    kept_before = {r["id"]: r for s in ("curated", "rejected") for r in rows[s]}
    # a plain rerun finds the output complete: errors are finished rows
    assert run(config, path, str(out), echo=lambda s: None)["accounting"]["errors"] == refused
    flag.unlink()  # the server takes them now
    said: list[str] = []
    report = run(config, path, str(out), retry_errors=True, echo=said.append)
    rows = outputs(out)
    ids = [r["id"] for s in SPLITS for r in rows[s]]
    assert report["accounting"]["ok"] and report["accounting"]["errors"] == 0 and not rows["errors"]
    assert sorted(ids) == sorted(pq.read_table(path)["id"].to_pylist())  # every row once
    assert any(f"{refused} error rows of engine stages reopened" in s for s in said)
    after = {r["id"]: r for s in ("curated", "rejected") for r in rows[s]}
    assert all(after[i]["edu_score"] == kept_before[i]["edu_score"] for i in kept_before)  # the others untouched
    assert (out / "_SUCCESS").exists()


def test_a_processor_judges_engine_failure_fails_the_block_and_a_rows_own_stays_a_row():
    """vLLM through `ray.data.llm` hands failures back as text per row (`should_continue_on_error`):
    a dead engine's rows are not written as error rows; one over-long prompt still is."""
    from audiocurate.judge.processors import INFERENCE_ERROR, LABEL_LOGPROBS, ProcessorJudgeResultStage

    config = PipelineConfig.load(overrides=["judge.backend=vllm", "judge.model=/models/llama",
                                            "judge.profile=smollm2-135m-edu"])
    stage = ProcessorJudgeResultStage(config, "llama")
    logprobs = pa.array([[-3.0, -2.0, -0.1, -2.0, -3.0]] * 3, pa.list_(pa.float64()))

    def table(errors):
        return pa.table({"id": ["a", "b", "c"], "transcript": ["x", "y", "z"], LABEL_LOGPROBS: logprobs,
                         INFERENCE_ERROR: pa.array(errors, pa.string())})

    with pytest.raises(EngineFault, match=r"judge: llama \(vllm\): .*EngineDeadError"):
        stage(table(["", "EngineDeadError: EngineCore encountered an issue", ""]))
    with pytest.raises(EngineFault, match="every one of 3 rows failed the same way"):
        stage(table(["RuntimeError: engine loop stopped"] * 3))
    out = stage(table(["", "ValueError: the prompt (3001 tokens) is longer than the maximum model length of 512", ""]))
    assert out[C.ERROR_STAGE].to_pylist() == [None, "judge", None]
    assert out["edu_score"].to_pylist()[0] is not None
