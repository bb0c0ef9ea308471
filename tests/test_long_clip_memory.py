"""Issue 25: a clip's memory does not grow with its length where it need not.

A long clip that is rejected (silent, too long) is measured as it streams and never held whole;
a header that lies about a length allocates nothing; the report's preview decodes only the
seconds it plays. Memory is Python's own count of allocations (`tracemalloc`: numpy's arrays
are counted), compared with what the whole clip's samples would take.

A huge Parquet cell (hours of FLAC) costs the read task twice the cell at most, once when handed
on; the decode stage and the settled-rows writer add no copy of it; the report's preview does not
read one over its cap at all. Those are Arrow's allocations, counted by a proxy of Arrow's
default memory pool (`_arrow_peak`)."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from audiocurate.audio import ClipTooLong, AudioDecodeError, decode_audio
from audiocurate.filters.audio import Silence, SilenceFilter, decode_measures, rejected_on_measures
from audiocurate.filters.base import Filter
from audiocurate.report_audio import CLIP_S, players_for
from audiocurate import report_audio

MB = 2**20
TWO_HOURS_S = 2 * 3600
# The whole two hours at 16 kHz: 230 MB as int16 samples, 460 MB as float32.
TWO_HOURS_FLOAT32_BYTES = TWO_HOURS_S * 16000 * 4


def _flac_in_blocks(seconds: float, rate: int, block_of) -> bytes:
    """FLAC of `seconds`, written 10 minutes at a time (the test never holds the clip whole)."""
    buf = io.BytesIO()
    total = int(seconds * rate)
    with sf.SoundFile(buf, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        done = 0
        while done < total:
            n = min(rate * 600, total - done)
            f.write(block_of(done, n))
            done += n
    return buf.getvalue()


@pytest.fixture(scope="module")
def two_hours_of_silence() -> bytes:
    """Two hours of digital silence at 48 kHz (Common Voice's rate): about 400 KB of FLAC."""
    return _flac_in_blocks(TWO_HOURS_S, 48000, lambda start, n: np.zeros(n, dtype=np.int16))


def _tone(seconds: float) -> bytes:
    """A quiet 440 Hz tone at 22.05 kHz (so it is resampled): not silent."""
    rate = 22050
    return _flac_in_blocks(seconds, rate, lambda start, n: (
        3000 * np.sin(2 * np.pi * 440 * (start + np.arange(n)) / rate)).astype(np.int16))


@pytest.fixture(scope="module")
def two_hours_of_tone() -> bytes:
    return _tone(TWO_HOURS_S)


def _peak_allocated(fn):
    """fn()'s result and the most memory (bytes) Python and numpy held at once while it ran."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_long_silent_clip_is_measured_without_keeping_its_samples(two_hours_of_silence):
    asked = []

    def keep_samples(clip):
        asked.append(clip)
        return False  # what the decode stage's silence filter says of this clip

    clip, peak = _peak_allocated(lambda: decode_audio(two_hours_of_silence, keep_samples=keep_samples))
    assert clip.measured_only and len(clip.pcm) == 0
    assert clip.duration_s == pytest.approx(TWO_HOURS_S)
    assert clip.peak_dbfs == -np.inf and clip.source_sample_rate == 48000
    assert len(asked) == 1 and asked[0].duration_s == pytest.approx(TWO_HOURS_S)
    # A block and the resampler's buffers: far below the clip's 460 MB of float32 (or 230 MB of int16).
    assert peak < 32 * MB < TWO_HOURS_FLOAT32_BYTES / 10, f"{peak / MB:.0f} MB"


def test_a_long_clip_that_is_wanted_is_decoded_again_exactly():
    twenty_minutes = _tone(1200)
    whole = decode_audio(twenty_minutes)
    asked = []
    again = decode_audio(twenty_minutes, keep_samples=lambda clip: asked.append(clip) or True, hold_s=300)
    assert len(asked) == 1 and asked[0].measured_only and asked[0].peak_dbfs == whole.peak_dbfs
    assert not again.measured_only
    assert np.array_equal(again.pcm, whole.pcm)
    assert (again.peak_dbfs, again.rms_dbfs, again.frames) == (whole.peak_dbfs, whole.rms_dbfs, whole.frames)


def test_a_short_clip_keeps_its_samples_in_one_pass_as_before():
    rate = 44100
    rng = np.random.default_rng(1)
    data = _flac_in_blocks(30, rate, lambda start, n: (rng.standard_normal(n) * 4000).astype(np.int16))
    before = decode_audio(data)
    asked = []
    now = decode_audio(data, keep_samples=lambda clip: asked.append(clip) or True, hold_s=600)
    assert not asked and not now.measured_only  # never asked: it is shorter than `hold_s`
    assert np.array_equal(now.pcm, before.pcm) and now.rms_dbfs == before.rms_dbfs
    # Held samples past `hold_s` (no trustworthy length in a WAV streamed without one) are let go.
    wav = io.BytesIO()
    sf.write(wav, (rng.standard_normal(rate * 30) * 4000).astype(np.int16), rate, format="WAV")
    measured = decode_audio(wav.getvalue(), keep_samples=lambda clip: False, hold_s=5)
    assert measured.measured_only and measured.duration_s == pytest.approx(30, abs=1e-3)


def test_a_clip_longer_than_the_limit_is_refused_by_its_header_before_decoding(two_hours_of_silence):
    t0 = time.perf_counter()
    with pytest.raises(ClipTooLong) as refused:
        decode_audio(two_hours_of_silence, max_duration_s=3600)
    assert time.perf_counter() - t0 < 1.0  # decoding two hours takes seconds: nothing was decoded
    assert refused.value.duration_s == pytest.approx(TWO_HOURS_S)
    assert "3600 s allowed" in refused.value.reason and "declares 7200 s" in refused.value.reason
    assert decode_audio(two_hours_of_silence, max_duration_s=3 * 3600, keep_samples=lambda c: False).measured_only


def test_a_clip_without_a_declared_length_is_refused_once_it_streams_past_the_limit():
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    sf.write(buf, (rng.standard_normal(16000 * 40) * 3000).astype(np.int16), 16000, format="OGG", subtype="VORBIS")
    with pytest.raises(ClipTooLong) as refused:
        decode_audio(buf.getvalue(), max_duration_s=15)
    assert refused.value.duration_s is None and "decoded no further" in refused.value.reason
    assert decode_audio(buf.getvalue(), max_duration_s=60).duration_s == pytest.approx(40, abs=0.1)


def _lying_wav(claimed_data_bytes: int, seconds: float = 1.0) -> bytes:
    """16 kHz 16-bit mono WAV whose RIFF and data chunk sizes claim `claimed_data_bytes`."""
    pcm = (np.sin(np.arange(int(16000 * seconds)) / 5) * 8000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    return (b"RIFF" + struct.pack("<I", min(claimed_data_bytes + 36, 0xFFFFFFFE)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", claimed_data_bytes) + pcm)


def test_a_wav_header_claiming_4_gb_is_not_believed_nor_allocated():
    data = _lying_wav(0xFFFFFFF0)  # 4 GB: 37 hours, in a file of 32 KB

    def decode():
        with pytest.raises(AudioDecodeError) as failed:
            decode_audio(data, max_duration_s=3600, keep_samples=lambda c: True)
        return failed.value

    error, peak = _peak_allocated(decode)
    assert not isinstance(error, ClipTooLong)  # not refused as long on a length the file does not hold
    assert "truncated" in error.reason and "holds 1.00 s" in error.reason
    assert peak < 8 * MB, f"{peak / MB:.0f} MB"


def test_the_preview_decodes_only_the_seconds_it_plays(two_hours_of_tone):
    whole = decode_audio(_tone(60))  # the same first minute: the same first blocks to the resampler
    preview, peak = _peak_allocated(lambda: decode_audio(two_hours_of_tone, first_s=CLIP_S))
    assert np.array_equal(preview.pcm, whole.pcm[: int(CLIP_S * 16000)])
    assert peak < 16 * MB, f"{peak / MB:.0f} MB"


class _InputCells:
    """The input's encoded audio by id, as `SourceAudio.raw_audio` hands it to the report."""

    def __init__(self, cells: dict[str, bytes]):
        self.cells = cells

    def raw_audio(self, ids: list[str], max_cell_bytes=None) -> dict[str, bytes]:
        return {i: self.cells[i] for i in ids}


def test_the_report_plays_a_rejected_two_hour_clip_without_decoding_it_whole(two_hours_of_tone):
    picked = {"silence": [("long", {"id": "long"}, "")]}
    t0 = time.perf_counter()
    players, peak = _peak_allocated(lambda: players_for(picked, None, "id", _InputCells({"long": two_hours_of_tone})))
    uri = players["silence"][0]["audio"]
    assert uri and uri.startswith("data:audio/ogg;base64,")
    assert peak < 24 * MB, f"{peak / MB:.0f} MB"  # the whole clip decoded: 230 MB and more
    assert time.perf_counter() - t0 < 5.0


class _NeedsSamples(Filter):
    name = "needs_samples"
    needs = ("pcm",)

    def reason(self, row):
        return None


def test_the_decode_filters_verdict_on_measures_alone(two_hours_of_silence):
    clip = decode_audio(two_hours_of_silence, keep_samples=lambda c: False)
    table = pa.table({"id": ["a"], "audio_bytes": [b"x"]})
    silence = Silence(SilenceFilter())
    assert decode_measures(clip)["peak_dbfs"] == -200.0
    assert rejected_on_measures([silence], table, 0, clip)
    # A filter before it that reads the samples decides first: they must be kept for it.
    assert not rejected_on_measures([_NeedsSamples(), silence], table, 0, clip)
    assert rejected_on_measures([silence, _NeedsSamples()], table, 0, clip)
    assert not rejected_on_measures([Silence(SilenceFilter(max_peak_dbfs=-300))], table, 0, clip)


# The decode stage's side: `decode.max_duration_s` and the filters' verdict passed to the decoder.
_stage_wired = pytest.mark.skipif(
    "max_duration_s" not in __import__("audiocurate.config", fromlist=["DecodeConfig"]).DecodeConfig.model_fields,
    reason="needs decode.max_duration_s and DecodeStage passing it (issue 25's stages.py/config.py change)")


def _decode_stage(**decode):
    from audiocurate.config import DecodeConfig
    from audiocurate.filters.audio import DurationFilter, DurationLimits
    from audiocurate.stages import DecodeStage

    filters = [DurationLimits(DurationFilter()), Silence(SilenceFilter())]
    return DecodeStage(DecodeConfig(**decode), "audio_bytes", filters=filters)


@_stage_wired
def test_the_decode_stage_rejects_a_long_silent_clip_without_holding_it(two_hours_of_silence):
    from audiocurate import contract as C

    table = pa.table({"id": ["long"], "audio_bytes": pa.array([two_hours_of_silence], pa.large_binary())})
    out, peak = _peak_allocated(lambda: _decode_stage()(table))
    row = out.to_pylist()[0]
    assert row[C.DROP_REASON] == "silence" and row["duration_s"] == pytest.approx(TWO_HOURS_S)
    assert peak < 32 * MB, f"{peak / MB:.0f} MB"


@_stage_wired
def test_the_decode_stage_rejects_a_clip_over_the_limit_as_too_long(two_hours_of_silence):
    from audiocurate import contract as C

    table = pa.table({"id": ["long"], "audio_bytes": pa.array([two_hours_of_silence], pa.large_binary())})
    row = _decode_stage(max_duration_s=3600)(table).to_pylist()[0]
    assert row[C.DROP_REASON] == "too_long" and row.get(C.ERROR) is None
    assert row["duration_s"] == pytest.approx(TWO_HOURS_S) and row["source_sample_rate"] == 48000


# Huge Parquet cells: what reading, decoding and previewing one costs in Arrow's memory.
CELL_MB = 40  # a cell over `resume.LARGE_GROUP_BYTES`, small enough to write in a blink
_POOLS: list[pa.MemoryPool] = []


def _arrow_peak(fn):
    """fn()'s result, the most Arrow held at once while it ran, and what it held whenever fn
    (a generator's consumer) called `now()`: bytes, through a proxy of the default pool."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    _POOLS.append(pool)  # what it allocated may outlive the call, and is freed through it
    held: list[int] = []
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        result = fn(lambda: held.append(pool.bytes_allocated()))
        return result, pool.max_memory(), held
    finally:
        pa.set_memory_pool(previous)


@pytest.fixture(scope="module")
def huge_cell_file(tmp_path_factory, two_hours_of_silence) -> tuple[str, int]:
    """A Parquet file as a long recording is stored: a short clip, then one row group of one
    cell that is `CELL_MB` of (FLAC-headed) bytes; uncompressed, dictionary-encoded (pyarrow's
    defaults but compression), as benchmarks/long_clip.py writes its 10 h and 24 h cells."""
    import pyarrow.parquet as pq

    path = str(tmp_path_factory.mktemp("huge") / "in.parquet")
    cell = two_hours_of_silence + bytes(CELL_MB * MB - len(two_hours_of_silence))
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("audio_bytes", pa.large_binary())]),
                          compression="none") as w:
        w.write_table(pa.table({"id": ["short"], "audio_bytes": pa.array([_tone(2)], pa.large_binary())}))
        w.write_table(pa.table({"id": ["long"], "audio_bytes": pa.array([cell], pa.large_binary())}))
    return path, len(cell)


def test_a_cells_buffer_is_its_columns_own_memory_not_a_copy():
    from audiocurate.audio import cell_buffer

    big = b"x" * (4 * MB)
    for typ in (pa.binary(), pa.large_binary()):
        whole = pa.array([b"ab", None, big, b""], typ)
        column = pa.chunked_array([whole.slice(0, 2), whole.slice(2)])
        got = [cell_buffer(column, i) for i in range(4)]
        assert got[0].to_pybytes() == b"ab" and got[1] is None and got[3].size == 0
        assert got[2].address == whole.buffers()[2].address + 2 and got[2].size == len(big)  # a view
        assert column[2].as_buffer().address != got[2].address  # what `column[i]` does: a copy
    hf = pa.StructArray.from_arrays([pa.array([b"ab", None, big]), pa.array(["a.flac", "b.flac", "c.flac"])],
                                    ["bytes", "path"], mask=pa.array([False, False, True]))
    assert cell_buffer(hf, 0).to_pybytes() == b"ab"
    assert cell_buffer(hf, 1) is None and cell_buffer(hf, 2) is None  # no bytes: its path; a null row
    assert cell_buffer(pa.array(["clips/a.flac"]), 0) is None


def test_reading_a_huge_cell_costs_twice_it_at_most_and_once_when_handed_on(huge_cell_file):
    import pyarrow.fs as pafs

    from audiocurate.sources.parquet import ParquetFileReader

    path, size = huge_cell_file

    def read(now):
        reader = ParquetFileReader(pafs.LocalFileSystem(), "id")
        groups = [{"group": g, "take": 1, "key": f"k{g}"} for g in range(2)]  # the read plan of the file
        out = []
        for t in reader(pa.table({"path": [path], "groups": [groups], "done": [[]], "segments_done": [[]]})):
            now()  # what the task holds while Ray copies the block out
            out.append(t["id"].to_pylist())
        return out

    ids, peak, held = _arrow_peak(read)
    assert ids == [["short"], ["long"]]
    # Before: pre-buffered (the chunk, its page, the array) and the page still held when handed on.
    assert peak < 2.2 * size, f"{peak / size:.2f} x the cell"
    assert held[-1] < 1.1 * size, f"{held[-1] / size:.2f} x the cell held when handed on"


def test_decoding_and_settling_a_huge_cell_copy_none_of_it(huge_cell_file):
    """Needs DecodeStage to hand the decoder `audio.cell_buffer` and SettledRowsStage to drop the
    audio before it filters (issue 25's stages.py/sinks.py change)."""
    import pyarrow.parquet as pq

    from audiocurate import contract as C
    from audiocurate.sinks import SettledRowsStage

    path, size = huge_cell_file
    table = pq.read_table(path).slice(1)  # the long row
    written = []

    class Sink:
        def write_table(self, t):
            written.append(t)

    def decode_and_settle(now):
        out = _decode_stage(max_duration_s=3600)(table)  # refused by its header: two hours
        return SettledRowsStage(Sink(), {}, "audio_bytes")(out)

    passed, peak, _ = _arrow_peak(decode_and_settle)
    assert passed.num_rows == 0 and written[0].column(C.DROP_REASON).to_pylist() == ["too_long"]
    assert "audio_bytes" not in written[0].column_names
    # Before: the cell copied by `column[i]` in the decode stage, and by the filter of settled rows.
    assert peak < 0.1 * size, f"{peak / size:.2f} x the cell"


def test_the_report_does_not_read_a_cell_over_the_preview_cap(huge_cell_file, monkeypatch):
    from audiocurate.sources.audio_by_id import SourceAudio

    path, size = huge_cell_file
    monkeypatch.setattr(report_audio, "PREVIEW_MAX_CELL_BYTES", size // 4)
    picked = {"too_long": [("long", {"id": "long"}, "")], "silence": [("short", {"id": "short"}, "")]}
    source = SourceAudio(path, None, {})
    players, peak, _ = _arrow_peak(lambda now: players_for(picked, None, "id", source))
    [long], [short] = players["too_long"], players["silence"]
    assert long["audio"] is None and long["audio_note"] == f"clip too large to preview: {CELL_MB} MB"
    assert short["audio"].startswith("data:audio/ogg;base64,") and "audio_note" not in short
    assert peak < 0.1 * size, f"{peak / size:.2f} x the cell"  # its cell was never read
    # Without the cap (an export of rejected clips) it is read, as an Arrow buffer: no Python copy.
    (cells, peak, _) = _arrow_peak(lambda now: source.raw_audio(["long"]))
    assert isinstance(cells["long"], pa.Buffer) and cells["long"].size == size
    assert peak < 2.2 * size, f"{peak / size:.2f} x the cell"


def test_a_row_group_of_long_recordings_is_not_read_for_previews(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from audiocurate.sources.audio_by_id import SourceAudio

    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"id": ["a", "b", "c"], "audio_bytes": [bytes(3 * MB)] * 3}), path,
                   compression="none", use_dictionary=False)
    cells = SourceAudio(path, None, {}).raw_audio(["b"], max_cell_bytes=2 * MB)
    assert cells["b"].reason == "clip too large to preview: its row group holds 3 clips in 9 MB"
