"""GPU backends, tested on CPU: HF Whisper and the HF judge from checkpoints saved to disk
(tiny.en's real weights converted from the embedded CTranslate2 model, the real SmolLM2, random
weights where no real model is here), the vLLM judge through Ray's own vLLM stage with only the
engine stood in for, and the HTTP judge against a real llama.cpp server."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiocurate.config import LlamaCppJudgeConfig, PipelineConfig, TransformersAsrConfig, TransformersJudgeConfig
from audiocurate.models import resolve_model

from conftest import speak

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


# ---- HF Whisper ----------------------------------------------------------------------------
@pytest.mark.slow  # real model weights: tens of seconds
def test_hf_whisper_batches_short_clips_and_windows_long_ones(tiny_whisper_dir):
    from audiocurate.asr import make_transcriber

    # Random weights loop, so every 30 s piece of a long clip falls back: two temperatures, not
    # six, and a 40 s clip in two windows (chunk_s=30) keep the fallback and the windowing in
    # about 20 s (a 70 s clip, chunk_s=60 and six temperatures took 80 s on 2 cores).
    asr = make_transcriber(TransformersAsrConfig(model=tiny_whisper_dir, device="cpu",
                                     compute_type="float32", beam_size=1, max_new_tokens=12, min_new_tokens=8,
                                     chunk_s=30, temperatures=[0.0, 1.0]))
    rng = np.random.default_rng(0)
    short = [(rng.standard_normal(16000 * s) * 2000).astype(np.int16) for s in (1, 3, 5)]
    long = (rng.standard_normal(16000 * 40) * 2000).astype(np.int16)
    out = asr.transcribe_batch([short[0], long, short[1], short[2]])
    assert len(out) == 4
    for r in (out[0], out[2], out[3]):
        assert r.text and math.isfinite(r.avg_logprob) and r.avg_logprob <= 0
        assert 0.0 <= r.no_speech_prob <= 1.0 and r.compression_ratio > 0 and r.language == "en"
    # long-form decoding ran to the end: both 30 s windows gave segments, none past the clip
    starts = [s.start_s for s in out[1].segments]
    assert starts and min(starts) < 30.0 <= max(starts)
    assert max(s.end_s for s in out[1].segments) <= 40.5


@pytest.mark.slow  # real model weights: tens of seconds
@pytest.mark.parametrize("min_new", [0, 6])
def test_hf_whisper_greedy_loop_equals_generate_and_the_confidence_pass(tiny_whisper_dir, embedded_whisper_hf_dir,
                                                                      min_new):
    """Beam 1 decodes in the backend's own loop: the same tokens, average log-probabilities and
    no-speech probabilities as `generate` followed by the teacher-forced confidence pass, on
    real weights (rows that end early, silence) and on random ones (rows cut by the budget)."""
    import soundfile as sf

    from audiocurate.asr import make_transcriber
    from audiocurate.asr.transformers import TransformersWhisperTranscriber

    rng = np.random.default_rng(3)
    speech = [sf.read(io.BytesIO(speak(t)), dtype="int16")[0] for t in SPOKEN[:3]]
    noise = [(rng.standard_normal(16000 * s) * 2000).astype(np.int16) for s in (1, 2)]
    clips = speech + noise + [np.zeros(16000, np.int16)]
    for model in (embedded_whisper_hf_dir, tiny_whisper_dir):
        asr = make_transcriber(TransformersAsrConfig(model=model, device="cpu", compute_type="float32", beam_size=1,
                                                     max_new_tokens=20, min_new_tokens=min_new))
        assert isinstance(asr, TransformersWhisperTranscriber) and asr.greedy_loop
        ours = asr.transcribe_batch(clips)
        asr.greedy_loop = False
        ref = asr.transcribe_batch(clips)
        assert [r.text for r in ours] == [r.text for r in ref]
        for a, b in zip(ours, ref):
            assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-5)
            assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-4, nan_ok=True)
            assert [s.n_tokens for s in a.segments] == [s.n_tokens for s in b.segments]
    assert ours[0].text and ours[-1].text  # random weights decode something for every row


def test_hf_whisper_keeps_cudnn_attention_out_unless_asked(tiny_whisper_dir):
    """cuDNN's attention plans every new shape anew (each decoding step's): the backend rules it
    out while it transcribes, unless configured, and leaves PyTorch's setting as it found it."""
    from audiocurate.asr import make_transcriber

    clip = [(np.random.default_rng(0).standard_normal(16000) * 2000).astype(np.int16)]
    before = torch.backends.cuda.cudnn_sdp_enabled()
    for allowed in (False, True):
        asr = make_transcriber(TransformersAsrConfig(model=tiny_whisper_dir, device="cpu", compute_type="float32",
                                                     beam_size=1, max_new_tokens=4, cudnn_attention=allowed))
        seen = []
        inner = asr._transcribe
        asr._transcribe = lambda clips: seen.append(torch.backends.cuda.cudnn_sdp_enabled()) or inner(clips)
        assert len(asr.transcribe_batch(clip)) == 1
        assert seen == [allowed] and torch.backends.cuda.cudnn_sdp_enabled() == before
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()


def test_device_log_mel_equals_the_feature_extractor():
    from transformers import WhisperFeatureExtractor

    from audiocurate.asr.transformers import log_mel_on_device

    rng = np.random.default_rng(1)
    clips = [(rng.standard_normal(16000 * s) * 3000).astype(np.int16) for s in (1, 4, 31)]
    for mels in (80, 128):
        fe = WhisperFeatureExtractor(feature_size=mels)
        ref = fe([c.astype(np.float32) / 32768.0 for c in clips], sampling_rate=16000, return_tensors="pt")["input_features"]
        ours = log_mel_on_device(clips, fe, "cpu")
        assert ours.shape == ref.shape == (3, mels, 3000)
        assert torch.allclose(ours, ref.float(), atol=2e-3)


@pytest.fixture(scope="module")
def embedded_whisper_hf_dir(tmp_path_factory):
    """tiny.en's real weights, converted from the embedded CTranslate2 model to a HF checkpoint."""
    from ct2_whisper import convert_to_hf

    return convert_to_hf(resolve_model("embedded:whisper-tiny.en"), str(tmp_path_factory.mktemp("tiny-en-hf")))


SPOKEN = [
    "Mount Everest is the highest mountain on Earth above sea level.",
    "I really did not like the ending of that film.",
    "The French Revolution began in seventeen eighty nine.",
    "The sun is a star at the center of our solar system.",
    "We should go to the beach next weekend.",
]


def test_hf_whisper_in_the_pipeline_stage(embedded_whisper_hf_dir, tmp_path, ray_local):
    """The whole pipeline on the transformers backend with tiny.en's real weights."""
    from audiocurate.pipeline import run

    clip = speak(SPOKEN[0], rate=16000, fmt="flac")
    pq.write_table(pa.table({"id": ["a", "b"], "audio_bytes": [clip, b"junk"]}), tmp_path / "in.parquet")
    config = PipelineConfig.load(overrides=[
        "ray.progress=false", "asr.backend=transformers", f"asr.model={embedded_whisper_hf_dir}", "asr.device=cpu",
        "asr.compute_type=float32", "asr.beam_size=1"])
    report = run(config, str(tmp_path / "in.parquet"), str(tmp_path / "out"), echo=lambda s: None)
    assert report["accounting"]["ok"] and report["accounting"]["errors"] == 1
    rows = [r for s in ("curated", "rejected") if (tmp_path / "out" / s).exists()
            for r in pq.read_table(tmp_path / "out" / s).to_pylist()]
    assert len(rows) == 1 and rows[0]["asr_model"] == embedded_whisper_hf_dir
    assert rows[0]["transcript"] == SPOKEN[0]
    assert rows[0].get("drop_reason") in (None, "low_edu_score")  # curated, or judged: past the filters


@pytest.mark.slow  # real model weights: tens of seconds
def test_hf_whisper_on_tiny_en_weights_decodes_as_ctranslate2(embedded_whisper_hf_dir):
    """Same weights, same features: the transformers backend gives CTranslate2's transcripts,
    no-speech probabilities and average log-probabilities (faster-whisper's definition), and
    the transcripts match the speech."""
    import ctranslate2
    import soundfile as sf
    from faster_whisper import WhisperModel
    from transformers import WhisperFeatureExtractor

    from audiocurate.asr import make_transcriber
    from audiocurate.filters import corpus_wer

    clips = [sf.read(io.BytesIO(speak(t)), dtype="int16")[0] for t in SPOKEN] + [np.zeros(16000 * 2, np.int16)]
    asr = make_transcriber(TransformersAsrConfig(model=embedded_whisper_hf_dir, device="cpu",
                                     compute_type="float32", beam_size=1, max_new_tokens=64))
    ours = asr.transcribe_batch(clips)

    ct2 = WhisperModel(resolve_model("embedded:whisper-tiny.en"), device="cpu", compute_type="float32", cpu_threads=2)
    feats = WhisperFeatureExtractor(feature_size=80)([c.astype(np.float32) / 32768.0 for c in clips],
                                                     sampling_rate=16000, return_tensors="np")["input_features"]
    sot, notimestamps = (ct2.hf_tokenizer.token_to_id(t) for t in ("<|startoftranscript|>", "<|notimestamps|>"))
    refs = ct2.model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)),
                              [[sot, notimestamps]] * len(clips), beam_size=1, max_length=66,
                              return_no_speech_prob=True, return_scores=True)
    for got, ref in zip(ours, refs):
        ids = ref.sequences_ids[0]
        assert got.text == ct2.hf_tokenizer.decode(ids).strip()
        assert got.no_speech_prob == pytest.approx(ref.no_speech_prob, abs=1e-3)
        # faster-whisper: avg_logprob = score * n / (n + 1), the end-of-text token included
        assert got.avg_logprob == pytest.approx(ref.scores[0] * len(ids) / (len(ids) + 1), abs=1e-3)
    assert ours[-1].no_speech_prob > 0.5  # silence
    assert corpus_wer(SPOKEN, [r.text for r in ours[:-1]], "whisper_english") < 0.2


# ---- HF judge ------------------------------------------------------------------------------
TEXTS = [
    "The mitochondria produce most of the energy a cell needs by breaking down sugar with oxygen.",
    "lol that was so funny, we should totally do that again next weekend.",
    "Mount Everest, in the Himalayas, is the highest mountain on Earth above sea level.",
    "I really did not like the ending of that film, it was way too long.",
]


@pytest.mark.slow  # real model weights: tens of seconds
def test_hf_judge_on_the_real_smollm2_agrees_with_llama_cpp():
    """The same GGUF weights through transformers (dequantized) and llama.cpp give the same answer."""
    pytest.importorskip("gguf")
    from audiocurate.judge import make_judge

    hf = make_judge(TransformersJudgeConfig(model="embedded:smollm2-135m", device="cpu", dtype="float32",
                                              profile="smollm2-135m-edu"))
    cpp = make_judge(LlamaCppJudgeConfig(profile="smollm2-135m-edu"))
    a, b = hf.score_batch(TEXTS), cpp.score_batch(TEXTS)
    for x, y in zip(a, b):
        assert x.error is None and x.score in {1, 2, 3, 4, 5}
        assert abs(x.mean - y.mean) < 0.25, (x.mean, y.mean)
    assert np.argsort([x.mean for x in a]).tolist()[-2:] == np.argsort([y.mean for y in b]).tolist()[-2:]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A random-weight Llama with SmolLM2's tokenizer and chat template, saved to disk."""
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = resolve_model("embedded:smollm2-135m")
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    d = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_hf_judge_chat_batch_with_truncation_and_errors(tiny_llama_dir):
    from audiocurate.judge import make_judge

    judge = make_judge(TransformersJudgeConfig(profile="llama3-edu", model=tiny_llama_dir, device="cpu",
                                   n_ctx=512))
    assert judge.use_chat
    long = "word " * 2000
    out = judge.score_batch(TEXTS + [long])
    for s in out:
        assert s.error is None and s.score in {1, 2, 3, 4, 5} and abs(sum(s.probs) - 1) < 1e-4
    assert out[-1].truncated and not out[0].truncated
    strict = make_judge(TransformersJudgeConfig(profile="llama3-edu", model=tiny_llama_dir, device="cpu",
                                    n_ctx=512, long_text="error"))
    s = strict.score_batch([TEXTS[0], long])
    assert s[0].error is None and s[1].error and "context" in s[1].error


# ---- vLLM judge: requests and parsing (vLLM itself needs a GPU) -----------------------------
def test_vllm_requests_are_constrained_to_five_labels():
    from audiocurate.judge import load_judge_profile
    from audiocurate.judge.processors import LABEL_LOGPROBS, ProcessorJudgeResultStage
    from audiocurate.judge.vllm import VllmJudgeRequest, VllmJudgeResult

    profile = load_judge_profile("llama3-edu")
    req = VllmJudgeRequest(profile)({"id": "a", "transcript": "Water boils at 100 C.", "error_stage": None, "drop_reason": None})
    assert req["messages"][-1]["content"].endswith("Water boils at 100 C.\nEducational value (1-5):")
    sp = req["sampling_params"]
    assert sp["max_tokens"] == 1 and sp["temperature"] == 0 and sp["logprobs"] >= 5
    assert sp["structured_outputs"] == {"choice": ["1", "2", "3", "4", "5"]}
    skipped = VllmJudgeRequest(profile)({"id": "b", "transcript": "x", "error_stage": "decode", "drop_reason": None})
    # no request: Ray's stages pass a row whose __inference_error__ is set by untouched
    assert "messages" not in skipped and "sampling_params" not in skipped and skipped["__inference_error__"]
    # What Ray's vLLM stage returns: per generated token, {token_id: {logprob, rank, decoded_token}}.
    engine_row = {**req, "generated_text": "4", "logprobs": [{
        19: {"logprob": -0.1, "rank": 1, "decoded_token": "4"}, 18: {"logprob": -2.5, "rank": 2, "decoded_token": "3"},
        20: {"logprob": -3.0, "rank": 3, "decoded_token": "5"}, 999: {"logprob": -4.0, "rank": 4, "decoded_token": "The"}}]}
    parsed = VllmJudgeResult(profile)(engine_row)
    assert "messages" not in parsed and "logprobs" not in parsed
    assert parsed[LABEL_LOGPROBS][3] == -0.1 and parsed[LABEL_LOGPROBS][0] == -math.inf
    table = pa.Table.from_pylist([{**parsed, "__inference_error__": ""},
                                  {"id": "c", "transcript": "y", "error_stage": None, "drop_reason": None,
                                   LABEL_LOGPROBS: None, "_judge_error": None, "__inference_error__": "prompt too long"}])
    config = PipelineConfig.load(overrides=["judge.backend=vllm", "judge.profile=llama3-edu"])
    out = ProcessorJudgeResultStage(config, "m")(table).to_pylist()
    assert out[0]["edu_score"] == 4 and 3.5 < out[0]["edu_score_mean"] < 4.2 and out[0]["error_stage"] is None
    assert out[1]["error_stage"] == "judge" and "prompt too long" in out[1]["error"]


def test_vllm_processor_is_built_with_rays_api():
    """`build_processor` + `vLLMEngineProcessorConfig` (Ray 2.60 names), continue-on-error on."""
    from audiocurate.judge.processors import build_judge_processor

    config = PipelineConfig.load(profile="gpu", overrides=["judge.model=/models/llama"])
    processor, model = build_judge_processor(config, 2)
    assert model == "/models/llama"
    assert processor.config.should_continue_on_error and processor.config.model_source == "/models/llama"
    assert processor.config.engine_kwargs["enable_prefix_caching"]
    assert [s.__class__.__name__ for s in processor.stages.values()][-1].startswith("vLLMEngine")


def test_vllm_judge_through_rays_vllm_stage_with_a_stand_in_engine(tiny_llama_dir, ray_local, monkeypatch, tmp_path):
    """The vLLM judge's whole path through Ray (`build_processor`, Ray's tokenize stage and
    vLLM stage, our request and result functions, continue-on-error), with only vLLM's engine
    stood in for by llama.cpp on the embedded SmolLM2: scores equal the llama.cpp judge's."""
    import ray
    import ray.cloudpickle

    import vllm_standin
    from audiocurate.judge import make_judge
    from audiocurate.judge import processors
    from audiocurate.plan import judge_steps
    from audiocurate.runtime import apply_steps

    ray.cloudpickle.register_pickle_by_value(vllm_standin)  # Ray's workers cannot import tests/
    build = processors.build_judge_processor

    def with_stand_in_engine(config, concurrency):
        processor, model = build(config, concurrency)
        engine = [s for s in processor.stages.values() if type(s).__name__ == "vLLMEngineStage"]
        assert len(engine) == 1 and engine[0].map_batches_kwargs["num_gpus"] == 1  # a whole GPU, as vLLM wants
        engine[0].fn = vllm_standin.LlamaCppVllmStageUDF
        engine[0].map_batches_kwargs.update(num_gpus=0, num_cpus=0.5)
        return processor, model

    monkeypatch.setattr(processors, "build_judge_processor", with_stand_in_engine)
    requests = tmp_path / "requests.txt"
    monkeypatch.setattr(vllm_standin, "REQUEST_LOG", str(requests))
    rows = [{"id": str(i), "transcript": t, "error_stage": None, "drop_reason": None} for i, t in enumerate(TEXTS)]
    rows.append({"id": "long", "transcript": "word " * 3000, "error_stage": None, "drop_reason": None})
    rows.append({"id": "gone", "transcript": None, "error_stage": "decode", "drop_reason": None})
    rows.append({"id": "quiet", "transcript": "Water boils at 100 C.", "error_stage": None, "drop_reason": "silence"})
    # The stand-in engine runs SmolLM2, so both sides take SmolLM2's profile (prompt and map).
    config = PipelineConfig.load(overrides=["judge.backend=vllm", f"judge.model={tiny_llama_dir}",
                                            "judge.profile=smollm2-135m-edu",
                                            "judge.n_ctx=512", "judge.resources.concurrency=1"])
    ds = apply_steps(ray.data.from_items(rows), judge_steps(config, 1))
    out = {r["id"]: r for r in ds.take_all()}
    assert set(out) == {r["id"] for r in rows}
    local = make_judge(LlamaCppJudgeConfig(profile="smollm2-135m-edu")).score_batch(TEXTS)
    for i, s in enumerate(local):
        r = out[str(i)]
        assert r["error_stage"] is None and r["edu_score"] in {1, 2, 3, 4, 5}, r.get("error")
        assert r["judge_model"] == tiny_llama_dir and abs(sum(r["edu_probs"]) - 1) < 1e-3
        assert r["edu_score_mean"] == pytest.approx(s.mean, abs=0.05) and r["edu_score"] == s.score
    assert out["long"]["error_stage"] == "judge" and "longer than the maximum model length" in out["long"]["error"]
    assert out["gone"]["error_stage"] == "decode" and out["gone"]["edu_score"] is None
    assert out["quiet"]["drop_reason"] == "silence" and out["quiet"]["edu_score"] is None
    # rows settled before the judge cost no request: the engine saw the active rows only
    assert sorted(requests.read_text().split()) == sorted([str(i) for i in range(len(TEXTS))] + ["long"])


def test_vllm_judge_takes_its_share_of_a_gpu():
    """judge.resources.num_gpus=0.5 reaches Ray's vLLM stage (it would take a whole GPU)."""
    from audiocurate.judge.processors import build_judge_processor

    config = PipelineConfig.load(profile="gpu", overrides=["judge.model=/models/llama"])
    processor, _ = build_judge_processor(config, 1)
    engine = [s for s in processor.stages.values() if type(s).__name__ == "vLLMEngineStage"][0]
    assert engine.map_batches_kwargs["num_gpus"] == 0.5
    assert engine.fn_constructor_kwargs["engine_kwargs"]["gpu_memory_utilization"] <= 0.5  # its share of memory too


# ---- HTTP judge against a real llama.cpp server ----------------------------------------------
def test_http_judge_through_rays_http_processor(llama_server, tmp_path, ray_local):
    import ray

    from audiocurate.plan import judge_steps
    from audiocurate.runtime import apply_steps

    rows = [{"id": str(i), "transcript": t, "error_stage": None, "drop_reason": None} for i, t in enumerate(TEXTS)]
    rows.append({"id": "long", "transcript": "word " * 3000, "error_stage": None, "drop_reason": None})  # too long
    rows.append({"id": "gone", "transcript": None, "error_stage": "decode", "drop_reason": None})  # passes through
    config = PipelineConfig.load(overrides=["judge.backend=http", f"judge.url={llama_server}/v1/completions",
                                            "judge.profile=smollm2-135m-edu",
                                            "judge.max_retries=1", "judge.qps=20"])
    ds = apply_steps(ray.data.from_items(rows), judge_steps(config, 1))
    out = {r["id"]: r for r in ds.take_all()}
    assert set(out) == {r["id"] for r in rows}
    for i in range(len(TEXTS)):
        r = out[str(i)]
        assert r["error_stage"] is None and r["edu_score"] in {1, 2, 3, 4, 5}, r.get("error")
        assert abs(sum(r["edu_probs"]) - 1) < 1e-3
    assert out["long"]["error_stage"] == "judge" and "refused" in out["long"]["error"]
    assert out["gone"]["error_stage"] == "decode" and out["gone"]["edu_score"] is None
    # The same GGUF through the server and in-process: same expected scores.
    from audiocurate.judge import make_judge

    local = make_judge(LlamaCppJudgeConfig(profile="smollm2-135m-edu")).score_batch(TEXTS)
    for i, s in enumerate(local):
        assert abs(out[str(i)]["edu_score_mean"] - s.mean) < 0.2
