"""Configuration is data: YAML, profiles and command-line overrides, validated."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from audiocurate.cli import build_parser, load_config
from audiocurate.config import PipelineConfig


def test_defaults_are_the_embedded_cpu_pipeline():
    c = PipelineConfig()
    assert c.asr.backend == "faster_whisper" and c.asr.model == "embedded:whisper-tiny.en"
    assert c.asr.language_id_model == "embedded:whisper-base" and c.filters.language.min_prob == 0.6
    assert c.judge.backend == "llama_cpp" and c.judge.profile == "gemma3-270m-edu"
    assert c.select.min_score == 3 and c.asr.threads == 1 and c.judge.threads == 1


def test_the_default_profile_spells_out_the_defaults():
    """`--profile default` and no profile are one configuration: default.yaml documents the
    defaults, and a default changed in code but not there (or the other way) fails here."""
    assert PipelineConfig.load(profile="default") == PipelineConfig.load()


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("asr:\n  beam_size: 2\n  resources: {batch_size: 4, concurrency: [1, 3]}\nselect:\n  min_score: 4\n")
    c = PipelineConfig.load(f, overrides=["asr.beam_size=3", "filters.duration.max_s=20.5", "source.id_column=key"])
    assert c.asr.beam_size == 3 and c.select.min_score == 4
    assert c.asr.resources.batch_size == 4 and c.asr.resources.concurrency == (1, 3)
    assert c.filters.duration.max_s == 20.5 and c.source.id_column == "key"


def test_profile_gpu_sets_gpu_backends():
    c = PipelineConfig.load(profile="gpu")
    assert c.asr.backend == "transformers" and c.asr.resources.num_gpus == 0.5
    assert c.judge.backend == "vllm" and c.judge.profile == "llama3-edu"


def test_unknown_keys_and_bad_values_are_refused(tmp_path):
    with pytest.raises(ValidationError):
        PipelineConfig.load(overrides=["asr.beam_sise=3"])
    with pytest.raises(ValidationError):
        PipelineConfig.load(overrides=["select.min_score=7"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        PipelineConfig.load(overrides=["asr.beam_size"])
    with pytest.raises(ValueError, match="unknown profile"):
        PipelineConfig.load(profile="nope")


def test_cli_flags_override_config(tmp_path):
    args = build_parser().parse_args(["run", "in", "out", "--min-score", "4", "--address", "auto",
                                      "--set", "asr.beam_size=2", "--no-progress"])
    c = load_config(args)
    assert c.select.min_score == 4 and c.ray.address == "auto" and c.asr.beam_size == 2 and not c.ray.progress


def test_fingerprint_ignores_speed_settings_only():
    base = PipelineConfig()
    faster = PipelineConfig.load(overrides=["asr.resources.batch_size=64", "ray.address=auto", "judge.threads=4"])
    different = PipelineConfig.load(overrides=["select.min_score=4"])
    assert base.fingerprint_hash() == faster.fingerprint_hash()
    assert base.fingerprint_hash() != different.fingerprint_hash()


def test_fingerprint_is_derived_from_the_fields_speed_only_marks():
    """A moved server, another GPU memory share or a longer timeout keeps a run resumable; a
    different model, prompt or threshold does not. No hand-kept list decides it."""
    from audiocurate.config import BACKEND_SECTIONS, changes_results

    http = ["judge.backend=http", "judge.url=http://a:8000/v1/completions"]
    base = PipelineConfig.load(overrides=http)
    moved = PipelineConfig.load(overrides=[*http[:1], "judge.url=http://b:9000/v1/completions", "judge.timeout_s=5",
                                           "judge.qps=2", "decode.read_block_mb=2", "output.rows_per_shard=5",
                                           "ray.probe_engines=false"])
    assert base.fingerprint_hash() == moved.fingerprint_hash()
    vllm = PipelineConfig.load(profile="gpu")
    less_memory = PipelineConfig.load(profile="gpu", overrides=["judge.vllm_engine_kwargs={gpu_memory_utilization: 0.3}"])
    assert vllm.fingerprint_hash() == less_memory.fingerprint_hash()
    for change in ("asr.beam_size=1", "judge.profile=llama3-edu", "filters.silence.max_peak_dbfs=-40", "asr.model=/models/x"):
        assert PipelineConfig.load(overrides=[*http, change]).fingerprint_hash() != base.fingerprint_hash(), change
    assert PipelineConfig.load(overrides=["judge.extra_buffer_types=true"]).fingerprint_hash() != PipelineConfig().fingerprint_hash()

    speed_only = set()

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            if not changes_results(field):
                speed_only.add(prefix + name)
            elif name in BACKEND_SECTIONS and not prefix:
                for backend_class in BACKEND_SECTIONS[name].values():
                    walk(backend_class, f"{name}.")
            elif isinstance(field.annotation, type) and issubclass(field.annotation, PipelineConfig.__mro__[1]):
                walk(field.annotation, f"{prefix}{name}.")
    walk(PipelineConfig)
    assert sorted(speed_only) == sorted([
        "source.storage", "decode.read_block_mb", "decode.resources", "asr.device", "asr.threads", "asr.resources",
        "judge.threads", "judge.device", "judge.url", "judge.api_key_env", "judge.max_retries", "judge.qps",
        "judge.timeout_s", "judge.vllm_engine_kwargs", "judge.resources", "output.storage", "output.rows_per_shard",
        "output.report_samples", "output.report_clips", "output.formats", "output.export_shard_size", "ray",
        "segment.spool_mb", "segment.in_flight_mb", "source.check_duplicate_ids", "output.compact_mb"])


def test_http_qps_is_a_whole_number():
    with pytest.raises(ValidationError, match="qps"):
        PipelineConfig.load(overrides=["judge.backend=http", "judge.url=http://a/v1/completions", "judge.qps=0.5"])


def test_each_backend_has_its_own_fields():
    c = PipelineConfig.load(overrides=["judge.backend=http", "judge.url=http://a/v1/completions"])
    assert type(c.judge).__name__ == "HttpJudgeConfig" and c.judge.timeout_s == 60.0
    assert type(PipelineConfig().judge).__name__ == "LlamaCppJudgeConfig"
    # A field another backend has is an error, not a silently ignored setting.
    with pytest.raises(ValidationError, match="extra_buffer_types"):
        PipelineConfig.load(overrides=["judge.backend=http", "judge.url=http://a/v1/completions",
                                       "judge.extra_buffer_types=true"])
    with pytest.raises(ValidationError, match="url"):
        PipelineConfig.load(overrides=["judge.backend=http"])
    # A layer that switches the backend leaves the old backend's fields behind.
    switched = PipelineConfig.load(overrides=["judge.threads=2", "judge.profile=llama3-edu", "judge.backend=vllm"])
    assert type(switched.judge).__name__ == "VllmJudgeConfig" and switched.judge.profile == "llama3-edu"
    gpu = PipelineConfig.load(profile="gpu", overrides=["asr.backend=faster_whisper"])
    assert gpu.asr.compute_type == "float16" and gpu.asr.threads == 1


def test_round_trip_yaml(tmp_path):
    c = PipelineConfig.load(overrides=["asr.beam_size=2"])
    f = tmp_path / "c.yaml"
    f.write_text(c.to_yaml())
    assert PipelineConfig.from_yaml(f) == c


def test_every_field_is_documented():
    """The field descriptions are the reference manual: none may be missing where it matters."""
    undocumented = []

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, PipelineConfig.__mro__[1]):
                walk(ann, f"{prefix}{name}.")
            elif not field.description and name not in {"enabled", "device", "storage", "resources"}:
                undocumented.append(prefix + name)
    walk(PipelineConfig)
    assert not undocumented, undocumented


def test_segment_settings_that_cannot_work_are_refused_at_load():
    with pytest.raises(ValidationError, match="segment lengths do not fit"):
        PipelineConfig.load(overrides=["segment.min_s=40"])
    # The cap on blocks in flight must hold a few blocks, or the stages would wait on each other.
    with pytest.raises(ValidationError, match="at least four blocks"):
        PipelineConfig.load(profile="longform", overrides=["segment.block_mb=256"])
    ok = PipelineConfig.load(profile="longform", overrides=["segment.block_mb=128"])
    assert ok.segment.in_flight_mb == 4 * ok.segment.block_mb


def test_fingerprint_holds_the_resolved_precision_not_the_device():
    """`compute_type: default` is int8 on a CPU and float16 on a GPU (faster-whisper; the
    transformers judge's `dtype: auto` likewise): a resume that lands on the other kind of node
    would mix precisions, so the resolved precision is part of the fingerprint."""
    cpu = PipelineConfig.load(overrides=["asr.device=auto"])
    cpu_again = PipelineConfig.load(overrides=["asr.device=cpu", "asr.resources.batch_size=2"])
    gpu = PipelineConfig.load(overrides=["asr.device=auto", "asr.resources.num_gpus=0.5"])
    assert (cpu.asr.resolved_precision(), gpu.asr.resolved_precision()) == ("int8", "float16")
    assert cpu.fingerprint_hash() == cpu_again.fingerprint_hash()
    assert cpu.fingerprint_hash() != gpu.fingerprint_hash()
    assert PipelineConfig.load(overrides=["asr.device=cuda"]).fingerprint_hash() == gpu.fingerprint_hash()
    # an explicit precision is the same numbers wherever it runs
    assert (PipelineConfig.load(overrides=["asr.compute_type=int8"]).fingerprint_hash()
            == PipelineConfig.load(overrides=["asr.compute_type=int8", "asr.device=cuda"]).fingerprint_hash())
    judge = ["judge.backend=transformers"]
    assert (PipelineConfig.load(overrides=[*judge, "judge.device=cpu"]).fingerprint_hash()
            != PipelineConfig.load(overrides=[*judge, "judge.device=cuda"]).fingerprint_hash())
    assert PipelineConfig.load(overrides=judge).result_fingerprint()["judge"]["resolved_precision"] == "float32"


def test_dedup_brings_its_fingerprint_column_and_the_quality_profile_turns_it_on():
    from audiocurate.config import PipelineConfig

    assert not PipelineConfig().dedup.enabled
    assert not any("AudioFingerprint" in c.type for c in PipelineConfig().filters.custom)
    config = PipelineConfig.load(profile="quality")
    assert config.dedup.enabled
    assert [c.type for c in config.filters.custom].count("audiocurate.corpus.fingerprint:AudioFingerprint") == 1
    again = PipelineConfig.model_validate(config.model_dump(mode="json"))  # a resumed run's recorded config
    assert [c.type for c in again.filters.custom] == [c.type for c in config.filters.custom]
    assert again.result_fingerprint() == config.result_fingerprint()
    capped = PipelineConfig.load(overrides=["corpus.max_hours_per={column: client_id, hours: 2}"])
    assert capped.corpus.max_hours_per.hours == 2.0 and "corpus" in capped.result_fingerprint()


def test_a_setting_added_as_before_is_in_a_results_identity_only_away_from_its_default():
    """`asr.language_detection_min_s` came after outputs were written; at its default (30 s)
    their results are what they were, so an output written before it resumes; at any other
    value the results differ and the output is another run's."""
    base = PipelineConfig.load()
    assert "language_detection_min_s" not in base.result_fingerprint()["asr"]
    shorter = PipelineConfig.load(overrides=["asr.language_detection_min_s=10"])
    assert shorter.result_fingerprint()["asr"]["language_detection_min_s"] == 10
    assert shorter.fingerprint_hash() != base.fingerprint_hash()
    assert PipelineConfig.load(overrides=["asr.language_detection_min_s=30"]).fingerprint_hash() == base.fingerprint_hash()
