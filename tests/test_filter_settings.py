"""Each built-in filter's settings live in its module and become a documented section
`filters.<name>`: the quality gates are such sections, off by default, on in `--profile quality`,
ordered by `filters.order`, and printed with every field's description by `audiocurate config`."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pydantic
import pytest
import soundfile as sf
import yaml

from audiocurate import contract as C
from audiocurate.cli import main
from audiocurate.config import FiltersConfig, PipelineConfig
from audiocurate.filters import FILTERS, build_filters
from audiocurate.filters.clipping import ClippingGate, ClippingSettings
from audiocurate.plan import placed_filters
from audiocurate.stages import DecodeStage

GATES = ("clipping", "noise", "reverb", "overlap", "bandwidth")
# The thresholds `--profile quality` gated on when its gates were `filters.custom` entries.
QUALITY_THRESHOLDS = {"clipping": {"max_clip_fraction": 0.01, "min_run": 3},
                      "noise": {"min_background_snr_db": 20.0}, "reverb": {"min_decay_db_100ms": 18.0},
                      "overlap": {"max_second_voice_ratio": 0.27}, "bandwidth": {"min_hz": None}}


def test_every_built_in_filter_with_settings_is_a_documented_section():
    sections = {name: FILTERS.get(name).settings for name in FILTERS.declared() if name != "speaking_rate"}
    sections = {name: s for name, s in sections.items() if s is not None}
    assert set(GATES) | {"duration", "silence", "dnsmos", "language", "text_language", "hallucination", "wer"} == set(sections)
    for name, settings in sections.items():
        field = FiltersConfig.model_fields[name]
        assert field.annotation is settings, name
        assert field.description, name
        assert isinstance(getattr(PipelineConfig().filters, name), settings)
        undocumented = [f for f, info in settings.model_fields.items() if not info.description]
        assert not undocumented, (name, undocumented)


def test_gates_are_off_by_default_and_the_quality_profile_turns_them_on_with_its_thresholds():
    columns = ["id", "audio_bytes"]
    assert not {f.name for f in build_filters(PipelineConfig(), columns)} & set(GATES)
    quality = PipelineConfig.load(profile="quality")
    decode = placed_filters(quality, columns)[C.DECODE]
    assert [f.name for f in decode] == ["duration", "silence", *GATES, "fingerprint"]
    for gate in decode[2:-1]:
        got = gate.config.model_dump(exclude={"enabled"})
        assert got == QUALITY_THRESHOLDS[gate.name], gate.name
    assert not [c for c in quality.filters.custom if "audiocurate.filters." in c.type]  # sections now
    layered = PipelineConfig.load(profile="longform,quality")  # sections merge over another profile
    assert all(getattr(layered.filters, g).enabled for g in GATES) and layered.segment.enabled


def test_a_gate_section_refuses_a_bad_threshold_or_an_unknown_field_naming_it():
    with pytest.raises(pydantic.ValidationError, match="max_clip_fraction"):
        PipelineConfig.load(overrides=["filters.clipping.max_clip_fraction=2"])
    with pytest.raises(pydantic.ValidationError, match="min_snr"):
        PipelineConfig.load(overrides=["filters.noise.min_snr=3"])


def _clipped_tone() -> bytes:
    """A tone driven 8x past full scale: clipped, and with no pause for the noise gate to find."""
    t = np.arange(16000) / 16000
    buf = io.BytesIO()
    sf.write(buf, np.clip(8 * 0.5 * np.sin(2 * math.pi * 220 * t), -1, 1), 16000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize("order, reason", [(None, "clipped"), (["noise", "clipping"], "noisy_background")])
def test_filters_order_ranks_the_gates_by_their_names(order, reason):
    """Both gates reject the row; the first in run order names it, all gates measure it."""
    overrides = {"filters.clipping.enabled": True, "filters.noise.enabled": True, "filters.order": order}
    config = PipelineConfig.load(overrides=overrides)
    rows = [{"id": "a", "audio_bytes": _clipped_tone()}]
    stage = DecodeStage(config.decode, "audio_bytes", filters=placed_filters(config, list(rows[0]))[C.DECODE])
    out = stage(pa.Table.from_pylist(rows)).to_pylist()[0]
    assert out[C.DROP_REASON] == reason
    assert out["clip_fraction"] > 0.5 and out["background_snr_db"] < 3


def _comment_above(lines: list[str], at: int, pad: str) -> str:
    """The comment lines right above line `at`, at indentation `pad`, as one paragraph."""
    above: list[str] = []
    while at > 0 and lines[at - 1].startswith(f"{pad}# "):
        at -= 1
        above.insert(0, lines[at][len(pad) + 2:])
    return " ".join(above)


def test_the_config_command_prints_every_gate_field_under_its_description(capsys):
    assert main(["config", "--profile", "quality"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    for gate in GATES:
        settings = FILTERS.get(gate).settings
        at = lines.index(f"  {gate}:")
        assert _comment_above(lines, at, "  ") == FiltersConfig.model_fields[gate].description
        for field, info in settings.model_fields.items():
            j = next(i for i in range(at + 1, len(lines)) if lines[i].startswith(f"    {field}:"))
            assert _comment_above(lines, j, "    ") == " ".join(info.description.split()), (gate, field)
            assert yaml.safe_load(lines[j].strip())[field] == getattr(PipelineConfig.load(profile="quality").filters,
                                                                     gate).model_dump()[field]
    assert PipelineConfig.model_validate(yaml.safe_load(text)) == PipelineConfig.load(profile="quality")


def test_a_gate_still_works_as_a_custom_filter_with_its_arguments():
    """An output recorded before the gates were sections names them in `filters.custom`."""
    config = PipelineConfig.load(overrides={"filters.custom": [
        {"type": "audiocurate.filters.clipping:ClippingGate", "args": {"max_clip_fraction": 0.5}}]})
    [gate] = [f for f in build_filters(config, ["id", "audio_bytes"]) if f.name == "clipping"]
    assert gate.config == ClippingSettings(max_clip_fraction=0.5)
    assert gate.reason({"clip_fraction": 0.6, "clip_longest_run": 9}) == "clipped"
    assert gate.reason({"clip_fraction": 0.4, "clip_longest_run": 9}) is None
    with pytest.raises(ValueError, match="max_clip_fraction"):
        ClippingGate(max_clip_fraction=2.0)
