"""The planner, without Ray: what each step of a run reserves and how many run, for a laptop
and for a GPU cluster, every figure read from the configuration, and a missing column named
at start instead of failing every block."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from audiocurate import contract as C
from audiocurate.config import PipelineConfig
from audiocurate.plan import (ClusterShape, MissingColumnError, Pool, StageSpec, check_needs, plan_pipeline)

INPUT = ["id", "audio_bytes", "sentence"]


def _plan(config: PipelineConfig, shape: ClusterShape, columns=INPUT, **kw):
    return plan_pipeline(config, shape, columns=columns, id_column="id", audio_column="audio_bytes", **kw)


def _actor_cpus(plan) -> float:
    """CPUs the model actors' pools reserve together, at their largest."""
    return sum(s.pool.most * s.args["num_cpus"] for s in plan.stages if s.pool and s.pool.kind == "actors"
               and s.name in (C.TRANSCRIBE, C.JUDGE))


def test_a_two_core_laptop_gets_every_core_a_whisper_actor_with_fractions_that_leave_decode_room():
    config = PipelineConfig.load(overrides=["ray.progress=false"])
    plan = _plan(config, ClusterShape(2, 0))
    assert [s.name for s in plan.stages] == ["decode", "split", "transcribe", "judge", "select", "package"]
    asr, judge, decode = plan.stage("transcribe"), plan.stage("judge"), plan.stage("decode")
    assert asr.pool == Pool("actors", 2) and judge.pool == Pool("actors", 1)
    # 2 x 0.5 + 0.5 asked for; scaled so the actors leave `ray.task_headroom_cpus` to the tasks
    assert asr.args["num_cpus"] == judge.args["num_cpus"] == 0.25
    assert _actor_cpus(plan) == pytest.approx(2 - config.ray.task_headroom_cpus)
    assert asr.args["num_gpus"] is None and asr.args["batch_size"] is None
    assert asr.args["max_restarts"] == config.ray.actor_max_restarts
    # a decode task per core, each a small share, whole read blocks per call
    assert decode.pool == Pool("tasks", 2)
    assert decode.args["num_cpus"] == 0.08 and decode.args["batch_size"] is None
    assert plan.read == {"num_cpus": 0.08, "block_bytes": 8 << 20, "segmented": False}
    assert plan.stage("split").args == {"rows_per_block": config.asr.resources.batch_size, "num_cpus": 0.25}


def test_a_gpu_cluster_gets_an_actor_per_gpu_and_stage_at_full_reservations():
    config = PipelineConfig.load(profile="gpu")
    plan = _plan(config, ClusterShape(64, 8, nodes=8))
    asr, judge, decode = plan.stage("transcribe"), plan.stage("judge"), plan.stage("decode")
    assert plan.actor_cpu_scale == 1.0
    assert asr.pool == Pool("actors", 8) and asr.args["num_gpus"] == config.asr.resources.num_gpus == 0.5
    assert asr.args["num_cpus"] == config.asr.resources.num_cpus
    assert judge.pool == Pool("actors", 8) and judge.args["num_gpus"] == config.judge.resources.num_gpus
    assert decode.pool == Pool("tasks", 64)
    # a fixed pool and an autoscaling one are kept as configured
    fixed = PipelineConfig.load(overrides=["asr.resources.concurrency=3", "judge.resources.concurrency=[1, 2]"])
    plan = _plan(fixed, ClusterShape(64, 0))
    assert plan.stage("transcribe").pool == Pool("actors", 3)
    assert plan.stage("judge").pool == Pool("actors", (1, 2)) and plan.stage("judge").pool.most == 2


def test_the_headroom_left_to_tasks_is_configuration():
    roomy = PipelineConfig.load(overrides=["ray.task_headroom_cpus=0.5"])
    tight = _plan(PipelineConfig(), ClusterShape(3, 0))  # 3 Whisper + 1 judge actors: 2 CPUs asked for
    assert _actor_cpus(tight) == pytest.approx(3 - 1.25, abs=0.005)  # reservations are rounded to 0.001
    assert _plan(roomy, ClusterShape(3, 0)).actor_cpu_scale == 1.0  # 2 fit in 3 - 0.5


def test_decode_concurrency_and_batch_size_are_honoured_and_the_settled_rows_write_fuses_with_decode():
    config = PipelineConfig.load(overrides=["decode.resources.concurrency=3", "decode.resources.batch_size=16",
                                            "decode.resources.num_cpus=0.2"])
    plan = _plan(config, ClusterShape(64, 0), sink=object())
    decode, settled = plan.stage("decode"), plan.stage("write_settled")
    assert decode.pool == Pool("tasks", 3) and decode.args["batch_size"] == 16 and decode.args["num_cpus"] == 0.2
    # the same arguments, so Ray Data runs the settled rows' write inside decode's task
    assert settled.pool == decode.pool
    assert {k: settled.args[k] for k in ("num_cpus", "batch_size", "max_retries")} == \
        {k: decode.args[k] for k in ("num_cpus", "batch_size", "max_retries")}
    assert plan.read["num_cpus"] == 0.2  # the Parquet read tasks too
    with pytest.raises(ValidationError, match="concurrency"):
        PipelineConfig.load(overrides=["decode.resources.concurrency=[1, 4]"])  # tasks have no [min, max]


def test_every_reservation_of_the_steps_that_only_move_rows_comes_from_the_ray_section():
    config = PipelineConfig.load(profile="longform", overrides=[
        "ray.row_task_cpus=0.1", "ray.id_filter_cpus=0.02", "ray.task_max_retries=5"])
    plan = _plan(config, ClusterShape(2, 0), skip_ids=["a"], reads=[{"path": "x", "row_groups": [0]}])
    assert [s.name for s in plan.stages] == ["skip_ids", "segment", "drop_written_settled_segments", "transcribe",
                                             "drop_written_segments", "judge", "select", "package"]
    for name in ("drop_written_settled_segments", "drop_written_segments", "select", "package"):
        assert plan.stage(name).args["num_cpus"] == 0.1 and plan.stage(name).args["max_retries"] == 5, name
    skip = plan.stage("skip_ids")
    assert skip.pool == Pool("actors", 1) and skip.args["num_cpus"] == 0.02
    assert skip.constructor_kwargs["skip_ref"] == ["a"] and skip.object_store_kwargs == ("skip_ref", "keep_ref")
    assert plan.write == {"num_cpus": 0.1}
    assert plan.block_bytes == config.segment.block_mb * 2**20
    # a folder's resume drops written segments by id, in the same one-actor step
    by_id = _plan(config, ClusterShape(2, 0), skip_segments=["r@0001.000"])
    assert by_id.stage("drop_written_segments").constructor_kwargs["settled_only"] is False
    assert by_id.stage("drop_written_settled_segments").args["num_cpus"] == 0.02


def test_a_missing_audio_column_names_the_stage_the_setting_and_what_is_there():
    with pytest.raises(MissingColumnError) as e:
        _plan(PipelineConfig(), ClusterShape(2, 0), columns=["id", "sentence"])
    message = str(e.value)
    assert message.startswith("decode stage: source.audio_column 'audio_bytes' is not a column of the input")
    assert "Available there: id, sentence (input)" in message


def test_a_transcript_column_that_is_not_there_is_named_before_any_row_runs():
    config = PipelineConfig.load(overrides=["asr.backend=none", "asr.text_column=nope", "judge.backend=none"])
    with pytest.raises(MissingColumnError, match=r"^transcribe stage: asr.text_column 'nope' is not a column") as e:
        _plan(config, ClusterShape(2, 0))
    assert "duration_s" in str(e.value) and "(decode)" in str(e.value)  # what decode wrote is listed as available
    ok = PipelineConfig.load(overrides=["asr.backend=none", "asr.text_column=sentence", "judge.backend=none"])
    assert _plan(ok, ClusterShape(2, 0)).stage("transcribe").needs == ("sentence",)


def test_needs_are_met_only_by_the_input_and_earlier_steps():
    read_words = StageSpec("count_words", None, needs=("transcript",))
    transcribe = StageSpec("transcribe", None, produces=("transcript",))
    check_needs([transcribe, read_words], ["id"])
    with pytest.raises(MissingColumnError, match=r"count_words stage: the column 'transcript' .* no stage before "
                                                 r"count_words writes it\. Available there: id \(input\); "
                                                 r"error_stage, error, drop_reason \(the row contract\)"):
        check_needs([read_words, transcribe], ["id"])


def test_a_column_the_pipeline_writes_is_refused_in_the_input_at_plan_time():
    with pytest.raises(C.ColumnCollision, match="transcript"):
        _plan(PipelineConfig(), ClusterShape(2, 0), columns=INPUT + ["transcript"])


def test_steps_get_only_their_own_columns_and_filters():
    config = PipelineConfig.load(overrides=["filters.wer.max_wer=0.5"])
    plan = _plan(config, ClusterShape(2, 0))
    decode = plan.stage("decode")
    assert decode.fn.audio_column == "audio_bytes" and C.PCM in decode.produces
    assert "wer" in plan.stage("transcribe").produces  # the WER filter runs with Whisper
    assert "wer" not in plan.stage("decode").produces and "wer" not in plan.stage("select").produces
    assert plan.stage("package").needs == ("id", C.PCM) and plan.stage("package").produces == (C.AUDIO,)


def test_model_steps_are_plain_specs_built_from_what_each_backend_declares():
    """An actor backend is its section's engine stage (a class, built once per actor from the
    config section, the placed filters and the engine-fault settings); a task backend is the
    stage it names; a processor judge is a `processor` step that builds its `ray.data.llm`
    processor where it is applied, then the task that scores its answers."""
    from audiocurate.judge.processors import ProcessorJudgeResultStage, judge_processor
    from audiocurate.stages import JudgeStage, TranscribeStage

    config = PipelineConfig.load(overrides=["filters.wer.max_wer=0.5", "ray.engine_fault_retries=4",
                                            "ray.engine_fault_backoff_s=0.5", "judge.resources.concurrency=[1, 3]"])
    plan = _plan(config, ClusterShape(8, 0))
    asr, judge = plan.stage(C.TRANSCRIBE), plan.stage(C.JUDGE)
    assert asr.how == judge.how == "map_batches" and asr.fn is TranscribeStage and judge.fn is JudgeStage
    assert asr.constructor_kwargs["config"] is config.asr and judge.constructor_kwargs["config"] is config.judge
    assert [f.name for f in asr.constructor_kwargs["filters"]] == [f.name for f in placed_filters_at_transcribe(config)]
    assert "wer" in [f.name for f in asr.constructor_kwargs["filters"]] and "filters" not in judge.constructor_kwargs
    for step in (asr, judge):
        assert step.constructor_kwargs["engine_fault_retries"] == 4
        assert step.constructor_kwargs["engine_fault_backoff_s"] == 0.5
        assert step.args["batch_format"] == "pyarrow" and step.args["batch_size"] is None
    assert asr.pool == Pool("actors", 8) and judge.pool == Pool("actors", (1, 3))
    assert asr.needs == (C.PCM,) and judge.needs == ("transcript",)

    bare = PipelineConfig.load(overrides=["asr.backend=none", "asr.text_column=sentence", "judge.backend=none",
                                          "ray.row_task_cpus=0.15"])
    plan = _plan(bare, ClusterShape(8, 0))
    asr, judge = plan.stage(C.TRANSCRIBE), plan.stage(C.JUDGE)
    assert type(asr.fn).__name__ == "ExistingTranscriptStage" and asr.fn.config is bare.asr
    assert type(judge.fn).__name__ == "NoJudgeStage"
    assert asr.pool is None and judge.pool is None and asr.constructor_kwargs == {}
    assert asr.args["num_cpus"] == judge.args["num_cpus"] == 0.15

    served = PipelineConfig.load(overrides=["judge.backend=http", "judge.url=http://127.0.0.1:9/v1/completions",
                                            "judge.model=served-model", "judge.resources.concurrency=2"])
    plan = _plan(served, ClusterShape(8, 0))
    assert [s.name for s in plan.stages][-4:] == [C.JUDGE, "judge_scores", "select", "package"]
    processor, scores = plan.stage(C.JUDGE), plan.stage("judge_scores")
    assert processor.how == "processor" and processor.fn is judge_processor
    assert processor.constructor_kwargs == {"config": served, "concurrency": 2} and processor.pool == Pool("actors", 2)
    assert isinstance(scores.fn, ProcessorJudgeResultStage) and scores.fn.model_name == "served-model"
    assert scores.produces == tuple(C.JUDGE_COLUMNS) and processor.needs == ("transcript",)


def placed_filters_at_transcribe(config: PipelineConfig):
    from audiocurate.plan import placed_filters

    return placed_filters(config, INPUT)[C.TRANSCRIBE]


def test_a_backend_that_reads_one_transcript_per_row_is_refused_for_segments_at_plan_time():
    config = PipelineConfig.load(profile="longform", overrides=["asr.backend=none", "asr.text_column=sentence"])
    with pytest.raises(ValueError, match="asr.backend none reads one transcript per input row; it cannot "
                                         r"transcribe the segments of a recording \(segment.enabled\)"):
        _plan(config, ClusterShape(2, 0))
