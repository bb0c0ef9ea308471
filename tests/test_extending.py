"""A new ASR backend, judge backend, export format and source kind is one module of your own:
`toy_plugin.py` below lives outside the package, registers one of each, and the public entry
points (configuration, `audiocurate config`, `open_source`, `export`, `pipeline.run`) take them
with no edit to any audiocurate file."""

from __future__ import annotations

import csv
import importlib
import io
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from audiocurate.cli import build_parser, main
from audiocurate.config import PipelineConfig

from conftest import speak

TOY_PLUGIN = '''
"""Toy pieces registered from outside audiocurate, as a user's own module would."""
import csv
import io
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from audiocurate.asr import ASR_BACKENDS, ActorTranscriber, Transcription, compression_ratio
from audiocurate.asr.settings import AsrSettings
from audiocurate.engines import Engine
from audiocurate.exports import EXPORT_FORMATS, Exporter
from audiocurate.judge import JudgeScore
from audiocurate.judge.backends import JUDGE_BACKENDS, ActorJudge
from audiocurate.judge.settings import JudgeSettings
from audiocurate.sources import SOURCE_FORMATS, Source, SourceError


class ToyAsrConfig(AsrSettings):
    backend: Literal["toy"] = "toy"
    words_per_s: float = Field(3.0, gt=0, description="Words the toy hears per second of audio.")


@ASR_BACKENDS.register("toy", config=ToyAsrConfig, engine=Engine("toy ASR", ("pyarrow",), False, "nothing"))
class ToyTranscriber(ActorTranscriber):
    model_name = "toy-asr"

    def __init__(self, config):
        self.config = config

    def transcribe_batch(self, clips):
        out = []
        for clip in clips:
            n = max(1, int(len(clip) / 16000 * self.config.words_per_s))
            text = " ".join(f"word{i % 7}" for i in range(n))
            out.append(Transcription(text, "en", -0.1, 0.01, compression_ratio(text)))
        return out


class ToyJudgeConfig(JudgeSettings):
    backend: Literal["toy_judge"] = "toy_judge"
    long_words: int = Field(6, ge=1, description="Transcripts of at least this many words score 4, others 2.")


@JUDGE_BACKENDS.register("toy_judge", config=ToyJudgeConfig, engine=Engine("toy judge", (), False, "nothing"))
class ToyJudge(ActorJudge):
    model_name = "toy-judge"

    def __init__(self, config, profile):
        self.config = config

    def score_batch(self, texts, languages=None):
        scores = []
        for text in texts:
            score = 4 if len(text.split()) >= self.config.long_words else 2
            probs = [0.0] * 5
            probs[score - 1] = 1.0
            scores.append(JudgeScore(score, float(score), probs))
        return scores


@EXPORT_FORMATS.register("toy_csv")
class ToyCsvExport(Exporter):
    """One CSV of id and transcript per output shard."""

    name = "toy_csv"

    def outputs(self, part):
        return [f"{part.name}.csv"]

    def write_part(self, part, table):
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["id", "transcript"])
        for row in table.select([self.id_column, "transcript"]).to_pylist():
            writer.writerow([self.clip_id(row), row["transcript"]])
        self.dest.write_bytes(self.dest.path(f"{part.name}.csv"), buf.getvalue().encode())


@SOURCE_FORMATS.register("toy_playlist")
def open_playlist(uri, fs, path, config):
    """A text file of `id<TAB>audio path` lines, paths relative to the file's folder."""
    with fs.open_input_stream(path) as f:
        lines = [line.split("\\t") for line in f.read().decode().splitlines() if line.strip()]
    if any(len(parts) != 2 for parts in lines):
        raise SourceError(f"{uri}: every line must be `id<TAB>path`")
    listing = pa.table({config.id_column: [i for i, _ in lines], "path": [p for _, p in lines]})
    root = path.rsplit("/", 1)[0]
    return Source(uri, "toy_playlist", config.id_column, "path", fs, root, [path], listing.column_names,
                  listing=listing)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The user's module, imported from its own folder (not from audiocurate)."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "toy_plugin.py").write_text(textwrap.dedent(TOY_PLUGIN))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("toy_plugin"), folder
    finally:
        sys.path.remove(str(folder))


def test_configuration_takes_the_registered_backends(plugin, capsys):
    module, _ = plugin
    toy = ["asr.backend=toy", "asr.words_per_s=2.5", "judge.backend=toy_judge", "judge.long_words=3",
           "output.formats=[toy_csv, nemo]", "source.format=toy_playlist"]
    config = PipelineConfig.load(overrides=toy)
    assert type(config.asr) is module.ToyAsrConfig and config.asr.words_per_s == 2.5
    assert type(config.judge) is module.ToyJudgeConfig and config.judge.long_words == 3
    assert config.output.formats == ["toy_csv", "nemo"] and config.source.format == "toy_playlist"
    # dumped with the toy's own fields, read back into the toy's class
    assert config.model_dump()["asr"]["words_per_s"] == 2.5
    assert PipelineConfig.model_validate(yaml_round_trip(config)) == config
    # a toy setting that changes results is in the resume fingerprint, a speed one is not
    assert PipelineConfig.load(overrides=[*toy, "asr.words_per_s=1"]).fingerprint_hash() != config.fingerprint_hash()
    assert PipelineConfig.load(overrides=[*toy, "asr.resources.batch_size=2"]).fingerprint_hash() == \
        config.fingerprint_hash()
    # switching to the toy leaves the default backend's fields behind; another's field is refused
    assert type(PipelineConfig.load(overrides=["asr.threads=2", "asr.backend=toy"]).asr) is module.ToyAsrConfig
    with pytest.raises(ValidationError, match="threads"):
        PipelineConfig.load(overrides=["asr.backend=toy", "asr.threads=2"])
    with pytest.raises(ValidationError, match="unknown ASR backend 'toyy'.*toy"):
        PipelineConfig.load(overrides=["asr.backend=toyy"])
    with pytest.raises(ValidationError, match="unknown export format 'csv'"):
        PipelineConfig.load(overrides=["output.formats=[csv]"])
    # the JSON schema lists the toy's class among the section's choices
    assert "ToyAsrConfig" in str(PipelineConfig.model_json_schema())
    # the command line: `audiocurate config` prints it, `audiocurate export` offers the format
    assert main(["config", *[a for o in toy for a in ("--set", o)]]) == 0
    printed = capsys.readouterr().out
    assert "backend: toy\n" in printed and "words_per_s: 2.5" in printed and "long_words: 3" in printed
    assert build_parser().parse_args(["export", "out", "toy_csv", "dest"]).format == "toy_csv"


def yaml_round_trip(config: PipelineConfig) -> dict:
    import yaml

    return yaml.safe_load(config.to_yaml())


def test_a_registered_source_kind_reads_rows(plugin, tmp_path):
    from audiocurate.config import SourceConfig
    from audiocurate.sources import SourceError, open_source

    for name, text in (("a.wav", "one clip"), ("b.wav", "another clip")):
        (tmp_path / name).write_bytes(speak(text, fmt="wav"))
    (tmp_path / "list.tsv").write_text("first\ta.wav\nsecond\tb.wav\n")
    source = open_source(str(tmp_path / "list.tsv"), SourceConfig(format="toy_playlist"))
    assert source.kind == "toy_playlist" and source.count() == 2
    assert source.first_ids(5) == (["first", "second"], [str(tmp_path / "list.tsv")])
    assert source.fetcher().read("b.wav") == (tmp_path / "b.wav").read_bytes()
    (tmp_path / "bad.tsv").write_text("only-an-id\n")
    with pytest.raises(SourceError, match="id<TAB>path"):
        open_source(str(tmp_path / "bad.tsv"), SourceConfig(format="toy_playlist"))


def test_a_registered_export_writes_files_read_back(plugin, tmp_path, ray_local):
    from ray import cloudpickle

    # The session's Ray workers cannot import the plugin: its exporter travels pickled by value.
    cloudpickle.register_pickle_by_value(plugin[0])
    try:
        check_toy_export(tmp_path)
    finally:
        cloudpickle.unregister_pickle_by_value(plugin[0])


def check_toy_export(tmp_path):
    from audiocurate.exports.run import export

    out = tmp_path / "out"
    (out / "curated").mkdir(parents=True)
    for part, ids in (("part-a", ["x/1", "x/2"]), ("part-b", ["y.3"])):
        pq.write_table(pa.table({"id": ids, "transcript": [f"text of {i}" for i in ids],
                                 "audio": [{"bytes": b"", "path": "x.flac"}] * len(ids)}), out / "curated" / f"{part}.parquet")
    summary = export(str(out), "toy_csv", str(tmp_path / "dest"), echo=lambda _: None)
    assert summary["clips"] == 3 and summary["shards"] == 2
    rows = [r for name in ("part-a", "part-b")
            for r in csv.DictReader(io.StringIO((tmp_path / "dest" / f"{name}.csv").read_text()))]
    assert rows == [{"id": i, "transcript": f"text of {i}"} for i in ("x/1", "x/2", "y.3")]
    again = export(str(out), "toy_csv", str(tmp_path / "dest"), echo=lambda _: None)
    assert again["exported_now"] == 0  # resumable as every built-in format


@pytest.mark.slow  # a whole run on real Ray over the 37 demo clips: about a minute on 2 cores
def test_a_run_with_the_toy_asr_and_judge_accounts_for_every_row(plugin, tmp_path):
    """The demo dataset through decode, the toy Whisper's place, the toy judge's and the sinks,
    on a local Ray whose workers import the plugin from its folder (`ray.env_vars`)."""
    import ray

    from audiocurate.cli import demo_dataset_path
    from audiocurate.config import RayConfig
    from audiocurate.pipeline import run
    from audiocurate.runtime import init_ray

    _, folder = plugin
    was_up = ray.is_initialized()
    ray.shutdown()  # the session's Ray was started without the plugin's folder on its workers' path
    try:
        config = PipelineConfig.load(overrides={
            "asr.backend": "toy", "judge.backend": "toy_judge", "output.formats": ["toy_csv"],
            "ray.num_cpus": 2, "ray.progress": False,
            "ray.env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(folder)}})
        report = run(config, demo_dataset_path(), str(tmp_path / "out"), echo=lambda _: None, stop_ray=True)
    finally:
        ray.shutdown()
        if was_up:
            init_ray(RayConfig(num_cpus=2, progress=False))
    ids = {split: pq.read_table(tmp_path / "out" / split, columns=["id"])["id"].to_pylist()
           for split in ("curated", "rejected", "errors")}
    every = [i for split in ids.values() for i in split]
    demo_ids = pq.read_table(demo_dataset_path(), columns=["id"])["id"].to_pylist()
    assert report["accounting"]["ok"] and sorted(every) == sorted(demo_ids)  # each input row exactly once
    assert len(ids["errors"]) == 3 and ids["curated"] and ids["rejected"]  # the demo's three broken rows
    curated = pq.read_table(tmp_path / "out" / "curated").to_pylist()
    assert {r["asr_model"] for r in curated} == {"toy-asr"} and {r["judge_model"] for r in curated} == {"toy-judge"}
    assert {r["edu_score"] for r in curated} == {4}
    exported = [r["id"] for f in sorted((tmp_path / "out" / "exports" / "toy_csv").glob("*.csv"))
                for r in csv.DictReader(io.StringIO(f.read_text()))]
    assert sorted(exported) == sorted(ids["curated"])
