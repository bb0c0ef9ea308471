"""Stages and filters on `pyarrow.Table`s, without Ray: what each stage writes, what it
marks, and where each filter runs."""

from __future__ import annotations

import io
import math
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from audiocurate import contract as C
from audiocurate.config import PipelineConfig
from audiocurate.filters import Filter, FilterPlacementError, build_filters
from audiocurate.plan import columns_after_decode, placed_filters, produced_by
from audiocurate.stages import DecodeStage, JudgeStage, PackageStage, SelectStage, TranscribeStage


def tone(seconds: float, *, rate: int = 48000, amplitude: float = 0.5) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, amplitude * np.sin(2 * math.pi * 440 * t), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decoded(config: PipelineConfig, rows: list[dict]) -> tuple[pa.Table, dict]:
    placed = placed_filters(config, list(rows[0]))
    stage = DecodeStage(config.decode, "audio_bytes", filters=placed[C.DECODE])
    return stage(pa.Table.from_pylist(rows)), placed


def test_decode_measures_keeps_samples_of_kept_rows_only_and_marks_each_fate():
    config = PipelineConfig()
    out, _ = decoded(config, [
        {"id": "ok", "audio_bytes": tone(1.0)},
        {"id": "corrupt", "audio_bytes": b"RIFF\x00\x00not audio at all"},
        {"id": "silent", "audio_bytes": tone(1.0, amplitude=0.0)},
        {"id": "short", "audio_bytes": tone(0.1)},
    ])
    rows = {r["id"]: r for r in out.to_pylist()}
    assert rows["ok"]["duration_s"] == pytest.approx(1.0, abs=1e-3) and rows["ok"]["source_sample_rate"] == 48000
    assert len(rows["ok"][C.PCM]) == 2 * 16000  # 16 kHz mono int16
    assert rows["corrupt"][C.ERROR_STAGE] == "decode" and rows["corrupt"][C.ERROR]
    assert rows["corrupt"]["duration_s"] is None
    assert rows["silent"][C.DROP_REASON] == "silence" and rows["silent"][C.PCM] is None
    assert rows["short"][C.DROP_REASON] == "too_short" and rows["short"][C.PCM] is None
    for name, typ in C.DECODE_COLUMNS.items():
        assert out.schema.field(name).type == typ


def test_rows_settled_upstream_pass_through_untouched():
    table = pa.Table.from_pylist([{"id": "a", "audio_bytes": tone(1.0), C.ERROR_STAGE: "read", C.ERROR: "x",
                                   C.DROP_REASON: None}])
    out = DecodeStage(PipelineConfig().decode, "audio_bytes")(table)
    assert out["duration_s"].to_pylist() == [None] and out[C.ERROR_STAGE].to_pylist() == ["read"]
    assert out.schema.field("peak_dbfs").type == pa.float32()  # same schema as a block with work


def test_decode_reads_cells_of_every_shape_without_copying_bytes_and_opens_local_files(tmp_path):
    import pyarrow.fs as pafs

    from audiocurate.sources.audio_cells import AudioFetcher, audio_input_of

    data = tone(1.0)
    (tmp_path / "a.flac").write_bytes(data)
    fetcher = AudioFetcher(pafs.LocalFileSystem(), str(tmp_path))
    table = pa.table({
        "bytes": pa.array([data], pa.binary()),
        "path": pa.array(["a.flac"], pa.string()),  # a string scalar is also a binary scalar
        "hf": pa.array([{"bytes": None, "path": "a.flac"}], pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    })
    assert isinstance(audio_input_of(table["bytes"][0], fetcher), pa.Buffer)
    for column in ("path", "hf"):
        opened = audio_input_of(table[column][0], fetcher)
        assert isinstance(opened, pa.NativeFile) and opened.read() == data
    for column in ("bytes", "path", "hf"):
        out = DecodeStage(PipelineConfig().decode, column, fetcher)(table)
        assert out[C.ERROR].to_pylist() == [None] and out["duration_s"].to_pylist() == [pytest.approx(1.0)], column


class ClipsShorterThan:
    """A transcriber that raises on any batch holding a clip shorter than `n` samples."""

    model_name = "stand-in"

    def __init__(self, n: int):
        self.n = n

    def transcribe_batch(self, clips):
        from audiocurate.asr import Transcription

        if any(len(c) < self.n for c in clips):
            raise RuntimeError("clip too short for this engine")
        return [Transcription(f"{len(c)} samples", "en", -0.2, 0.01, 1.1) for c in clips]


def pcm_table(lengths: list[int]) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(len(lengths))],
                     C.PCM: pa.array([np.zeros(n, "<i2").tobytes() for n in lengths], pa.large_binary())})


def test_a_row_that_breaks_a_batch_fails_alone():
    config = PipelineConfig.load(overrides=["asr.resources.batch_size=4"])
    stage = TranscribeStage(config.asr)
    stage.transcriber = ClipsShorterThan(100)
    out = stage(pcm_table([16000, 50, 8000, 16000, 4000]))
    rows = out.to_pylist()
    assert [r[C.ERROR_STAGE] for r in rows] == [None, "transcribe", None, None, None]
    assert "clip too short" in rows[1][C.ERROR]
    assert [r["transcript"] for r in rows] == ["16000 samples", None, "8000 samples", "16000 samples", "4000 samples"]
    assert all(r["asr_s"] is not None and r["asr_s"] >= 0 for r in rows)


def test_transcript_filters_run_inside_the_transcribe_stage():
    config = PipelineConfig.load(overrides=["asr.language_id_model=null"])  # the stand-in hears no language
    placed = placed_filters(config, ["id", "audio_bytes", "sentence"])
    stage = TranscribeStage(config.asr, filters=placed[C.TRANSCRIBE])

    class Says:
        model_name = "stand-in"

        def transcribe_batch(self, clips):
            from audiocurate.asr import Transcription

            texts = ["the cat sat on the mat", "go go go go go go go", "", "the cat sat on a hat"]
            return [Transcription(t, "en", -0.2, 0.01, 1.1) for t in texts[:len(clips)]]

    stage.transcriber = Says()
    table = pcm_table([32000] * 4).append_column("duration_s", pa.array([2.0] * 4)).append_column(
        "sentence", pa.array(["the cat sat on the mat"] * 4))
    rows = stage(table).to_pylist()
    assert [r[C.DROP_REASON] for r in rows] == [None, "repeated_ngrams", "empty_transcript", None]
    # WER is measured for every transcribed row, rejected or not
    assert rows[0]["wer"] == 0.0 and rows[3]["wer"] == pytest.approx(2 / 6) and rows[1]["wer"] is not None


def test_judge_isolates_a_failing_row_and_records_refusals():
    from audiocurate.judge import JudgeScore

    class Judge:
        model_name = "stand-in"

        def score_batch(self, texts):
            if any("boom" in t for t in texts):
                raise ValueError("engine choked")
            return [JudgeScore.failed("too long") if t == "long" else JudgeScore(4, 3.9, [0.1] * 5) for t in texts]

    stage = JudgeStage(PipelineConfig().judge)
    stage.judge = Judge()
    table = pa.table({"id": ["a", "b", "c", "d"], "transcript": ["fine", "boom", "long", "fine too"],
                      C.DROP_REASON: [None, None, None, "silence"]})
    rows = stage(table).to_pylist()
    assert [r[C.ERROR_STAGE] for r in rows] == [None, "judge", "judge", None]
    assert "engine choked" in rows[1][C.ERROR] and rows[2][C.ERROR] == "too long"
    assert [r["edu_score"] for r in rows] == [4, None, None, None]  # "d" was rejected upstream: never judged
    assert rows[3]["judge_s"] is None


def test_select_keeps_scores_at_or_above_min_score():
    config = PipelineConfig.load(overrides=["select.min_score=3"])
    stage = SelectStage(placed_filters(config, ["id", "audio_bytes"])[C.SELECT])
    rows = stage(pa.table({"id": list("abcd"), "edu_score": pa.array([1, 3, 5, None], pa.int8())})).to_pylist()
    assert [r[C.DROP_REASON] for r in rows] == ["low_edu_score", None, None, "low_edu_score"]


def test_package_writes_flac_for_kept_rows_and_drops_transport_columns():
    table = pcm_table([16000, 16000]).append_column("audio_bytes", pa.array([b"x", b"y"]))
    table = C.mark(table, drops={1: "silence"})
    out = PackageStage(PipelineConfig().output, "audio_bytes", "id")(table)
    assert C.PCM not in out.column_names and "audio_bytes" not in out.column_names
    kept, dropped = out[C.AUDIO].to_pylist()
    assert dropped is None and kept["path"] == "r0.flac"
    audio, rate = sf.read(io.BytesIO(kept["bytes"]))
    assert rate == 16000 and len(audio) == 16000


class NeedsRms(Filter):
    needs = ("rms_dbfs",)

    def reason(self, row):
        return "quiet" if row["rms_dbfs"] < -30 else None


class NeedsTranscript(Filter):
    name = "keyword"
    needs = ("transcript",)

    def reason(self, row):
        return "keyword" if "cat" in (row["transcript"] or "") else None


class NeedsScore(Filter):
    needs = ("edu_score_mean",)

    def reason(self, row):
        return None


def test_each_filter_runs_where_its_needs_are_first_met():
    from audiocurate.filters import place_filters

    points = [("decode", {"rms_dbfs", "id"}), ("transcribe", {"rms_dbfs", "id", "transcript"}),
              ("select", {"rms_dbfs", "id", "transcript", "edu_score_mean"})]
    placed = place_filters([NeedsScore(), NeedsTranscript(), NeedsRms()], points)
    assert [type(f) for f in placed["decode"]] == [NeedsRms]
    assert [type(f) for f in placed["transcribe"]] == [NeedsTranscript]
    assert [type(f) for f in placed["select"]] == [NeedsScore]

    class NeedsNothingThere(Filter):
        needs = ("speaker_id",)

    with pytest.raises(FilterPlacementError, match="speaker_id"):
        place_filters([NeedsNothingThere()], points)


def test_a_filter_that_raises_costs_its_row_only():
    class Fragile(Filter):
        name = "fragile"
        needs = ("transcript",)

        def reason(self, row):
            if row["transcript"] == "bad":
                raise KeyError("no such thing")
            return None

    out = SelectStage([Fragile()])(pa.table({"id": ["a", "b"], "transcript": ["good", "bad"]})).to_pylist()
    assert out[0][C.ERROR_STAGE] is None
    assert out[1][C.ERROR_STAGE] == "select" and "filter fragile failed: KeyError" in out[1][C.ERROR]


@pytest.fixture
def filter_module(tmp_path, monkeypatch):
    """A filter in a module of its own, importable only by this process (not installed)."""
    (tmp_path / "my_filters_x1.py").write_text(textwrap.dedent('''
        from audiocurate.filters import Filter

        class HasWord(Filter):
            needs = ("transcript",)

            def __init__(self, word: str):
                self.word = word

            def reason(self, row):
                return f"says_{self.word}" if self.word in (row["transcript"] or "").lower().split() else None
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_filters_x1"
    sys.modules.pop("my_filters_x1", None)


def test_custom_filter_from_config_is_built_placed_and_ordered(filter_module):
    config = PipelineConfig.load(overrides={"filters.custom": [
        {"type": f"{filter_module}:HasWord", "name": "has_the", "args": {"word": "the"}}]})
    placed = placed_filters(config, ["id", "audio_bytes"])
    assert [type(f).__name__ for f in placed[C.TRANSCRIBE]] == ["Language", "Hallucination", "HasWord"]
    first = PipelineConfig.load(overrides={"filters.custom": config.model_dump()["filters"]["custom"],
                                           "filters.order": ["has_the", "hallucination"]})
    assert [type(f).__name__ for f in build_filters(first, ["id", "audio_bytes"])][:2] == ["HasWord", "Hallucination"]
    with pytest.raises(ValueError, match="nope"):
        build_filters(PipelineConfig.load(overrides={"filters.order": ["nope"]}), ["id"])
    with pytest.raises(ValueError, match="cannot import"):
        build_filters(PipelineConfig.load(overrides={"filters.custom": [{"type": "no_such_mod:X"}]}), ["id"])
    with pytest.raises(ValueError, match="cannot build"):
        build_filters(PipelineConfig.load(overrides={"filters.custom": [{"type": f"{filter_module}:HasWord"}]}), ["id"])


def test_an_input_column_the_pipeline_writes_is_refused_by_name():
    config = PipelineConfig()
    placed = placed_filters(config, ["id", "audio_bytes", "sentence", "language"])
    with pytest.raises(C.ColumnCollision, match=r"'language' \(written by transcribe\)"):
        C.check_columns(["id", "audio_bytes", "sentence", "language"], produced_by(placed, config), "audio_bytes")
    with pytest.raises(C.ColumnCollision, match=r"'wer' \(written by transcribe \(filter wer\)\)"):
        C.check_columns(["id", "audio_bytes", "sentence", "wer"], produced_by(placed, config), "audio_bytes")
    # A Hugging Face `audio` column is replaced by the packaged audio by design.
    C.check_columns(["id", "audio", "sentence"], produced_by(placed, config), "audio")


def test_rows_settled_while_decoding_get_every_later_column_in_order():
    config = PipelineConfig()
    placed = placed_filters(config, ["id", "audio_bytes", "sentence"])
    later = list(columns_after_decode(placed, config))
    assert later[:len(C.ASR_COLUMNS)] == list(C.ASR_COLUMNS)
    assert later.index("wer") < later.index("edu_score")
    assert "wer" not in columns_after_decode(placed_filters(config, ["id", "audio_bytes"]), config)
    detailed = PipelineConfig.load(overrides=["asr.word_timestamps=true", "asr.language=null"])
    extra = columns_after_decode(placed_filters(detailed, ["id", "audio_bytes"]), detailed)
    assert extra["words"] == C.WORDS_TYPE and "language_prob" in extra
    assert "words" not in later and "language_prob" in later  # the default hears each clip's language
    plain = PipelineConfig.load(overrides=["asr.language_id_model=null"])
    assert "language_prob" not in columns_after_decode(placed_filters(plain, ["id", "audio_bytes"]), plain)


def test_dnsmos_separates_clean_speech_from_speech_in_noise_and_gates_only_when_asked():
    from conftest import speak

    from audiocurate.audio import decode_audio, encode_flac

    clean = decode_audio(speak("The mitochondria produce energy for the cell through respiration.", fmt="flac"),
                         target_rate=16000).pcm.astype(np.float64)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(len(clean)) * np.sqrt(np.mean(clean ** 2))  # 0 dB SNR
    noisy = np.clip(clean + noise, -32768, 32767)
    rows = [{"id": "clean", "audio_bytes": encode_flac(clean.astype(np.int16))},
            {"id": "noisy", "audio_bytes": encode_flac(noisy.astype(np.int16))}]
    measured, _ = decoded(PipelineConfig.load(overrides=["filters.dnsmos.enabled=true"]), rows)
    ovrl = dict(zip(measured["id"].to_pylist(), measured["dnsmos_ovrl"].to_pylist()))
    assert ovrl["clean"] > ovrl["noisy"] + 0.8, ovrl
    assert measured[C.DROP_REASON].to_pylist() == [None, None]  # measuring only, by default
    gated, _ = decoded(PipelineConfig.load(overrides=["filters.dnsmos.enabled=true", "filters.dnsmos.min_ovrl=2.5"]), rows)
    assert gated[C.DROP_REASON].to_pylist() == [None, "low_dnsmos"]


def test_language_gate_and_granary_rules_reject_with_their_own_reasons():
    config = PipelineConfig.load(overrides=["filters.language.min_avg_logprob=-0.8", "asr.language_id_model=null",
                                            "filters.hallucination.min_unique_word_ratio=0.3",
                                            "filters.hallucination.max_word_chars=40"])
    stage = SelectStage(placed_filters(config, ["id", "audio_bytes"])[C.TRANSCRIBE])
    table = pa.Table.from_pylist([
        {"id": "en", "transcript": "The heart pumps blood through the body.", "avg_logprob": -0.3},
        {"id": "cs", "transcript": "Prague is the main town of the river moldau.", "avg_logprob": -1.1},
        {"id": "loop", "transcript": "yes no yes maybe no yes no maybe yes no yes maybe", "avg_logprob": -0.2},
        {"id": "garbage", "transcript": "and then " + "x" * 60, "avg_logprob": -0.2},
    ]).append_column("duration_s", pa.array([3.0] * 4)).append_column(
        "no_speech_prob", pa.array([0.01] * 4, pa.float32())).append_column("compression_ratio", pa.array([1.2] * 4))
    reasons = dict(zip(table["id"].to_pylist(), stage(table)[C.DROP_REASON].to_pylist()))
    assert reasons == {"en": None, "cs": "low_confidence", "loop": "low_unique_words", "garbage": "long_word"}
    # Detection-based gating applies only when Whisper detects the language.
    multi = PipelineConfig.load(overrides=["asr.language=null", "filters.language.allowed=[en]",
                                           "filters.language.min_prob=0.7"])
    lang = [f for f in placed_filters(multi, ["id"])[C.TRANSCRIBE] if f.name == "language"][0]
    assert lang.reason({"language": "de", "language_prob": 0.99}) == "language"
    assert lang.reason({"language": "en", "language_prob": 0.5}) == "language"
    assert lang.reason({"language": "en", "language_prob": 0.9}) is None
    fixed = PipelineConfig.load(overrides=["filters.language.min_prob=0.7", "asr.language_id_model=null"])
    assert not [f for f in placed_filters(fixed, ["id"])[C.TRANSCRIBE] if f.name == "language"]  # nothing detected
    # The English default: tiny.en writes, whisper-base hears; another language is rejected.
    default = [f for f in placed_filters(PipelineConfig.load(), ["id"])[C.TRANSCRIBE] if f.name == "language"][0]
    assert default.reason({"language": "cs", "language_prob": 0.9}) == "language"
    assert default.reason({"language": "en", "language_prob": 0.5}) == "language"
    assert default.reason({"language": "en", "language_prob": 0.8}) is None


def test_speaking_rate_outliers_are_judged_against_their_own_recording():
    # in the stream, within a block (`scope: block`); the default takes them in a corpus pass (test_fences)
    config = PipelineConfig.load(profile="longform", overrides=["filters.speaking_rate.scope=block"])
    placed = placed_filters(config, ["id", "audio_bytes"])
    assert [f.name for f in placed[C.TRANSCRIBE]][-2:] == ["hallucination", "speaking_rate"]  # after the cheap rules
    assert not [f for f in placed_filters(PipelineConfig(), ["id"])[C.TRANSCRIBE] if f.name == "speaking_rate"]
    stage = SelectStage([f for f in placed[C.TRANSCRIBE] if f.name == "speaking_rate"])
    words = "the river runs north to the sea and the boats go with it "
    rows = []
    # A fast talker (about 16 chars/s) and a slow one (about 9): the same 9 chars/s segment is
    # an outlier in the first recording and ordinary in the second.
    for parent, rate in (("fast", 16.0), ("slow", 9.0)):
        for k, d in enumerate((10.0, 12.0, 9.0, 11.0, 10.0)):
            rows.append({"id": f"{parent}@{k}", "parent_id": parent, "duration_s": d,
                         "transcript": (words * 5)[:int(rate * d)]})
    rows.append({"id": "fast@half", "parent_id": "fast", "duration_s": 10.0, "transcript": (words * 5)[:90]})
    rows.append({"id": "slow@same", "parent_id": "slow", "duration_s": 10.0, "transcript": (words * 5)[:90]})
    # Too few segments to have quartiles: not judged, however odd.
    rows += [{"id": f"short@{k}", "parent_id": "short", "duration_s": 10.0, "transcript": t}
             for k, t in enumerate(["a" * 20, "b" * 160, "c" * 90])]
    out = stage(pa.Table.from_pylist(rows))
    reasons = {i: r for i, r in zip(out["id"].to_pylist(), out[C.DROP_REASON].to_pylist()) if r}
    assert reasons == {"fast@half": "chars_per_s_outlier"}
    # A row settled earlier keeps its reason and is not part of the fences: counted in, the
    # second 14 chars/s row would widen them enough to keep the first.
    even = [{"id": f"even@{k}", "parent_id": "even", "duration_s": 10.0, "transcript": "x" * n}
            for k, n in enumerate((100, 100, 100, 100, 140, 140))]
    table = C.mark(C.ensure_status(pa.Table.from_pylist(even)), drops={5: "silence"})
    out = stage(table)
    assert dict(zip(out["id"].to_pylist(), out[C.DROP_REASON].to_pylist())) == {
        **{f"even@{k}": None for k in range(4)}, "even@4": "chars_per_s_outlier", "even@5": "silence"}
    # With word timestamps the rate is over the words' span, not the padded duration: a short
    # segment with a second of padding is not slow.
    words = lambda n: [{"word": "w", "start_s": 0.5, "end_s": 0.5 + n, "probability": 1.0}]  # noqa: E731
    padded = [{"id": f"p@{k}", "parent_id": "p", "duration_s": d + 1.0, "transcript": "x" * int(12 * d),
               "words": words(d)} for k, d in enumerate((20.0, 22.0, 18.0, 25.0, 2.5))]
    out = stage(pa.Table.from_pylist(padded))
    assert out[C.DROP_REASON].to_pylist() == [None] * 5
    without = stage(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "words"} for r in padded]))
    assert without[C.DROP_REASON].to_pylist()[-1] == "chars_per_s_outlier"


@pytest.mark.parametrize("binary_type", [pa.large_binary(), pa.binary()])
def test_pcm_rows_are_each_rows_samples_in_the_order_asked(binary_type):
    """The transcribe stage's views of many rows at once: across chunks, sliced chunks, null
    cells, empty clips, rows asked in any order."""
    rng = np.random.default_rng(0)
    cells = [rng.integers(-32768, 32767, int(rng.integers(0, 50)), dtype=np.int16).tobytes() if i % 7 else None
             for i in range(60)]
    whole = pa.array(cells, binary_type)
    table = pa.table({"id": [str(i) for i in range(60)],
                      C.PCM: pa.chunked_array([whole.slice(0, 13), whole.slice(13, 30), whole.slice(43)])})
    rows = np.array([59, 3, 14, 0, 42, 43, 7, 13])
    got = C.pcm_rows(table, rows)
    assert [g.dtype for g in got] == [np.dtype("int16")] * len(rows)
    assert [g.tolist() for g in got] == [C.pcm_of(table, int(i)).tolist() for i in rows]
    assert got[3].tolist() == np.frombuffer(cells[0] or b"", "<i2").tolist() and len(got[-4]) == 0  # row 42: null


def test_a_filter_failing_every_row_the_same_way_is_not_written_as_row_errors():
    """A filter whose model is gone (or whose code is broken for every clip) is not the rows'
    fault: the block fails with EngineFault naming the filter, so no row is lost as an error."""
    from audiocurate.core.faults import EngineFault

    class Broken(Filter):
        name = "broken"
        needs = ("transcript",)

        def reason(self, row):
            raise RuntimeError("session is closed")

    table = pa.table({"id": ["a", "b", "c"], "transcript": ["x", "y", "z"]})
    with pytest.raises(EngineFault, match="select: filter broken: .*every one of 3 rows"):
        SelectStage([Broken()])(table)


def test_a_filter_out_of_memory_fails_the_block_even_on_one_row():
    from audiocurate.core.faults import EngineFault

    class Hungry(Filter):
        name = "hungry"
        needs = ("transcript",)

        def reason(self, row):
            if row["transcript"] == "long":
                raise MemoryError("cannot allocate 9 GB")
            return None

    with pytest.raises(EngineFault, match=r"select: filter hungry: .*\(MemoryError: cannot allocate"):
        SelectStage([Hungry()])(pa.table({"id": ["a", "b"], "transcript": ["short", "long"]}))


def test_engine_stages_create_their_engine_from_the_registry_when_a_row_needs_it_and_anew_after_reset(monkeypatch):
    from typing import Literal

    from audiocurate.core.registry import Registered
    from audiocurate.engines import Engine
    from audiocurate.judge import JudgeScore
    from audiocurate.judge.backends import JUDGE_BACKENDS, ActorJudge
    from audiocurate.judge.none import NoJudgeConfig
    from audiocurate.judge.settings import JudgeSettings

    loads = []

    class CountingJudgeConfig(JudgeSettings):
        backend: Literal["counting"] = "counting"

    class CountingJudge(ActorJudge):
        model_name = "counting"

        def __init__(self, config, profile):
            loads.append((type(config).__name__, profile.name))

        def score_batch(self, texts, languages=None):
            return [JudgeScore(3, 3.0, [0.0, 0.0, 1.0, 0.0, 0.0]) for _ in texts]

    monkeypatch.setitem(JUDGE_BACKENDS._entries, "counting", Registered(
        "counting", CountingJudge, CountingJudgeConfig, Engine("counting judge", (), False, "nothing")))
    stage = JudgeStage(CountingJudgeConfig(profile="smollm2-135m-edu"))
    assert stage.engine_name == "counting judge" and loads == []
    settled = pa.table({"id": ["a"], "transcript": ["x"], C.DROP_REASON: ["silence"]})
    assert stage(settled).to_pylist()[0]["judge_model"] is None and loads == []  # nothing to judge: no load
    table = pa.table({"id": ["a", "b"], "transcript": ["x", "y"], C.DROP_REASON: [None, None]})
    assert [r["judge_model"] for r in stage(table).to_pylist()] == ["counting", "counting"]
    stage(table)
    assert loads == [("CountingJudgeConfig", "smollm2-135m-edu")]  # once per stage, with the section's profile
    stage.reset_engine()  # what an engine fault does before the next try
    stage(table)
    assert len(loads) == 2
    # a backend that runs as a task has no engine to load inside a judge actor
    with pytest.raises(ValueError, match="judge.backend 'none' runs as a task, not inside a judge actor"):
        JudgeStage(NoJudgeConfig()).judge
