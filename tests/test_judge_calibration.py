"""A calibration map holds for the judge it was fitted with: model, weights type, engine build, prompt."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from audiocurate.judge import load_judge_profile
from audiocurate.judge.profile import Calibration, EngineRecord

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", CONSTRAINTS.read_text(), flags=re.M)
    assert match, f"{package} is not pinned in {CONSTRAINTS}"
    return f"{package}=={match.group(1)}"


def shipped_profiles() -> list[str]:
    folder = resources.files("audiocurate.judge") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


@pytest.mark.parametrize("name", shipped_profiles())
def test_every_shipped_map_was_fitted_with_the_pinned_engine(name):
    """Upgrading llama-cpp-python in constraints.txt without refitting the maps fails here: the
    same prompt through another build moves the expected scores, and with them what is kept."""
    profile = load_judge_profile(name)
    if profile.calibration is None:
        return
    fitted = profile.calibration.fitted_with
    assert fitted is not None, f"{name}: the calibration does not record the model, weights and engine it was fitted with"
    assert fitted.model == profile.model
    package = fitted.engine.split("==")[0]
    assert fitted.engine == pinned(package), (
        f"{name}: calibration fitted with {fitted.engine}, constraints.txt pins {pinned(package)}; "
        f"refit: python benchmarks/judge_eval.py --judge-profile {name} --fit --write")
    assert fitted.prompt == profile.prompt_digest(), (
        f"{name}: the calibration was fitted with another prompt (digest {fitted.prompt}, the profile's is "
        f"{profile.prompt_digest()}): new examples move the expected scores; refit the map "
        f"(python benchmarks/judge_eval.py --judge-profile {name} --fit --write)")


def test_the_prompt_digest_follows_what_the_judge_reads_and_only_that():
    profile = load_judge_profile("gemma3-270m-edu")
    digest = profile.prompt_digest()
    examples = list(profile.examples)
    examples[0] = examples[0].model_copy(update={"score": 2})
    assert profile.model_copy(update={"examples": examples}).prompt_digest() != digest
    assert profile.model_copy(update={"examples": examples[::-1]}).prompt_digest() != digest  # order matters to it
    assert profile.model_copy(update={"instructions": profile.instructions + " "}).prompt_digest() != digest
    assert profile.model_copy(update={"calibration": None, "description": "x"}).prompt_digest() == digest


def test_a_map_names_what_differs_from_the_judge_it_was_fitted_with():
    cal = Calibration(x=[1, 5], y=[1, 5], fitted_on="test",
                      fitted_with=EngineRecord(model="embedded:smollm2-135m", weights="f16",
                                               engine="llama-cpp-python==0.3.36"))
    assert cal.mismatch("embedded:smollm2-135m", "f16", "llama-cpp-python==0.3.36") is None
    why = cal.mismatch("embedded:smollm2-135m", "stored", "llama-cpp-python==0.3.40")
    assert "weights 'stored'" in why and "engine 'llama-cpp-python==0.3.40'" in why and "model" not in why
    assert Calibration(x=[1, 5], y=[1, 5], fitted_on="old map").mismatch("m", "f16", "x") is None
    cal.fitted_with.prompt = "c01e953d4d2e35b7"
    assert cal.mismatch("embedded:smollm2-135m", "f16", "llama-cpp-python==0.3.36", "c01e953d4d2e35b7") is None
    why = cal.mismatch("embedded:smollm2-135m", "f16", "llama-cpp-python==0.3.36", "0123456789abcdef")
    assert "prompt '0123456789abcdef' (fitted with 'c01e953d4d2e35b7')" in why and "engine" not in why
    assert cal.mismatch("embedded:smollm2-135m", "f16", "llama-cpp-python==0.3.36") is None  # no digest given


def test_the_installed_engine_is_the_pinned_one():
    """The maps are checked against constraints.txt; this ties constraints.txt to what runs."""
    from audiocurate.judge.llama_cpp import engine_version

    assert engine_version() == pinned("llama-cpp-python")


def test_a_length_aware_map_reads_long_texts_lower_and_short_ones_higher():
    """Small judges give long texts higher expected scores whatever they say: a map with a negative
    `length_slope` takes that back, and reads the expected score alone at the reference length."""
    cal = Calibration(x=[1, 2, 3], y=[1, 3, 5], length_slope=-0.5, length_reference_chars=100, fitted_on="test")
    assert cal.apply(2.0, 100) == pytest.approx(3.0)
    assert cal.apply(2.0) == pytest.approx(3.0)  # no length known: the knots as they are
    assert cal.apply(2.0, 400) < 3.0 < cal.apply(2.0, 25)
    assert cal.apply(2.0, 400) == pytest.approx(3.0 - 2 * 0.5 * np.log(4))
    profile = load_judge_profile("smollm2-135m-edu").model_copy(update={"calibration": cal})
    assert profile.score(2.2, None, 30) >= 3 > profile.score(2.2, None, 400)
