"""Decode any audio into 16 kHz mono, or say clearly why not.

Backends are tried in order, libsndfile (`soundfile`) first and PyAV (FFmpeg) second, as in
lhotse's composite backend; when every one fails, one `AudioDecodeError` names each reason.
Decoding streams block by block through a soxr resampler, so a long recording costs its 16 kHz
16-bit samples in memory and never a float copy at the source rate; given a `PcmSink`, not even
those: each block goes to the sink (the segment stage's spool) as it is decoded. A clip's memory
can be bounded whatever its length: `max_duration_s` refuses a longer clip (`ClipTooLong`) by its
header or as soon as the stream passes the limit; `keep_samples` measures a clip longer than
`hold_s` without keeping its samples, and decodes it again only when they are wanted (a silent
10-hour clip costs a block, not 1.2 GB); `first_s` decodes a preview and reads no further.

Corrupt input is reported, never guessed: where the container declares a length (FLAC's
STREAMINFO, a WAV data chunk), a stream that decodes shorter is `truncated`, because PyAV
otherwise hands back the first part of a broken file as if it were whole.

>>> clip = decode_audio(open("speech.flac", "rb").read())      # doctest: +SKIP
>>> clip.sample_rate, clip.duration_s, clip.source_sample_rate  # doctest: +SKIP
(16000, 3.2, 48000)
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Callable, Iterator, Optional, Protocol, Union

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

TARGET_RATE = 16_000
_BLOCK_SECONDS = 10
HOLD_S = 600.0
"""`decode_audio(keep_samples=)`: clips up to this long keep their samples as they stream (one
pass, 19 MB at most); longer ones are measured first and decoded again only if wanted."""


class AudioDecodeError(ValueError):
    """The bytes are not decodable audio; `reason` is a sentence for a human."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ClipTooLong(AudioDecodeError):
    """The clip is longer than `max_duration_s`; it was refused before its samples were kept.

    `duration_s`: its length where a trustworthy header declares it, else None (the stream was
    counted only up to the limit). The source facts are those of the stream that was opened."""

    def __init__(self, reason: str, duration_s: Optional[float], max_duration_s: float,
                 source_sample_rate: int, source_channels: int, source_format: str):
        super().__init__(reason)
        self.duration_s = duration_s
        self.max_duration_s = max_duration_s
        self.source_sample_rate = source_sample_rate
        self.source_channels = source_channels
        self.source_format = source_format


@dataclass(frozen=True)
class DecodedAudio:
    """A clip at `sample_rate`, mono, as 16-bit PCM (half the memory of float32)."""

    pcm: np.ndarray  # int16, shape (n,)
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    source_format: str
    peak_dbfs: float
    rms_dbfs: float
    frames: int  # at `sample_rate`; where the samples went to a sink, `pcm` is empty
    measured_only: bool = False  # `keep_samples` declined them: `pcm` is empty, the measures are whole

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def as_float32(self) -> np.ndarray:
        return pcm16_to_float32(self.pcm)


@dataclass
class _Stream:
    """What a backend found: the stream's parameters and an iterator of [n, ch] blocks: float32,
    or int16 where the source holds 16-bit samples (passed on exactly when no mixing or
    resampling is needed)."""

    sample_rate: int
    channels: int
    declared_frames: Optional[int]  # only where the container states a length
    format: str
    blocks: Iterator[np.ndarray]
    declared_exact: bool = True  # False: an encoder's estimate (MP3 Xing), checked within 2 %
    declared_fits: bool = True  # False: a WAV whose data chunk claims more bytes than the file has

    @property
    def trusted_frames(self) -> Optional[int]:
        """The declared length where it can decide before decoding (exact, and not more than the
        bytes present: a WAV claiming 4 GB in 1 MB is truncated or lying), else None."""
        return self.declared_frames if self.declared_exact and self.declared_fits else None


class AudioBackend(Protocol):
    name: str

    def open(self, data: IO[bytes], pcm16_rate: Optional[int] = None) -> _Stream:
        """`pcm16_rate`: a mono 16-bit stream at this rate may come as int16 blocks."""
        ...


class PcmSink(Protocol):
    """Where decoded 16 kHz int16 blocks go instead of one array (`decode_audio(into=)`)."""

    def write(self, pcm: np.ndarray) -> None: ...

    def clear(self) -> None:
        """Forget what was written: the next backend starts the clip again."""


AudioInput = Union[bytes, bytearray, memoryview, "pa.Buffer", IO[bytes]]
"""Encoded audio: bytes, an Arrow buffer (a Parquet cell, not copied) or a seekable binary file."""


@dataclass(frozen=True)
class CellTooLarge:
    """A clip left unread because its cell is larger than the reader allowed: the size is the
    footer's, before any of it is read (its row group's audio, over `rows` rows)."""

    nbytes: int
    rows: int = 1

    @property
    def reason(self) -> str:
        if self.rows == 1:
            return f"clip too large to preview: {self.nbytes / 2**20:,.0f} MB"
        return (f"clip too large to preview: its row group holds {self.rows} clips in "
                f"{self.nbytes / 2**20:,.0f} MB")


def cell_buffer(column: Union["pa.Array", "pa.ChunkedArray"], row: int) -> Optional["pa.Buffer"]:
    """Row `row` of a binary column (or the `bytes` of a `{bytes, path}` struct column) as a
    slice of the column's own data buffer. `column[row]` copies the value, as every Arrow
    scalar owns its bytes, and one Parquet cell can hold hours of audio. None where the
    cell is null or the column holds no bytes (a path, read by its file instead)."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        if row < len(chunk):
            break
        row -= len(chunk)
    else:
        raise IndexError(f"row {row} past the column's end")
    one = chunk.slice(row, 1)
    if one.null_count:
        return None
    if pa.types.is_struct(one.type):
        if one.type.get_field_index("bytes") < 0:
            return None
        one = one.field("bytes")
        if one.null_count:
            return None
    if pa.types.is_large_binary(one.type):
        width = np.int64
    elif pa.types.is_binary(one.type):
        width = np.int32
    else:
        return None
    _, offsets, data = one.buffers()
    start, end = np.frombuffer(offsets, dtype=width, count=2, offset=one.offset * np.dtype(width).itemsize)
    if data is None or end <= start:
        return pa.py_buffer(b"")
    return data.slice(int(start), int(end - start))


def _reader(data: AudioInput) -> IO[bytes]:
    """A seekable binary file over the input, at its start, without copying it."""
    if hasattr(data, "seek"):
        data.seek(0)
        return data
    if isinstance(data, bytes):
        return io.BytesIO(data)  # shares the bytes object's memory
    import pyarrow as pa

    return pa.BufferReader(data if isinstance(data, pa.Buffer) else pa.py_buffer(data))


def _wav_data_bytes(f: IO[bytes]) -> Optional[int]:
    """`wav_declared_data_bytes` of a file, walking its chunk headers (a WAV may carry megabytes
    of other chunks before `data`), the file left at its start."""
    found = _wav_data_chunk(f)
    return found[0] if found else None


def _wav_data_chunk(f: IO[bytes]) -> Optional[tuple[int, bool]]:
    """The declared size of a WAV's `data` chunk and whether the file holds that many bytes
    after its header; None where there is no such declaration. The file is left at its start."""
    try:
        head = bytes(f.read(12))
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        order = "little" if head[:4] == b"RIFF" else "big"
        while True:
            chunk = bytes(f.read(8))
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:8], order)
            if chunk[:4] == b"data":
                if size in (0, 0xFFFFFFFF):
                    return None
                start = f.tell()
                end = f.seek(0, io.SEEK_END)
                return size, start + size <= end
            f.seek(size + (size & 1), io.SEEK_CUR)
    except (OSError, ValueError):  # a chunk size past the end
        return None
    finally:
        f.seek(0)


def _size(data: AudioInput) -> int:
    if hasattr(data, "seek"):
        pos = data.seek(0, io.SEEK_END)
        data.seek(0)
        return int(pos)
    return len(data) if not hasattr(data, "size") else int(data.size)


class SoundfileBackend:
    """libsndfile: WAV, FLAC, Ogg Vorbis/Opus, MP3; fast and exact about lengths."""

    name = "soundfile"
    _EXACT_LENGTH = {"FLAC", "AIFF", "W64"}
    _ESTIMATED_LENGTH = {"MPEG", "MP3"}

    def open(self, data: IO[bytes], pcm16_rate: Optional[int] = None) -> _Stream:
        import soundfile as sf

        wav_chunk = _wav_data_chunk(data)
        f = sf.SoundFile(data)
        declared: Optional[int] = None
        exact = fits = True
        fmt, subtype, channels = f.format, f.subtype, f.channels  # each a call into libsndfile
        if fmt in ("WAV", "WAVEX", "RF64"):
            # libsndfile trims a WAV's frame count to the bytes present; the header knows better.
            if wav_chunk is not None and channels > 0:
                declared = wav_chunk[0] // (channels * _bytes_per_sample(subtype))
                fits = wav_chunk[1]
        elif fmt in self._EXACT_LENGTH:
            declared = f.frames
        elif fmt in self._ESTIMATED_LENGTH:
            declared, exact = f.frames, False
        # Samples that pass through unchanged are read as they are; any others are mixed or
        # resampled in float32, which libsndfile converts to faster than numpy would.
        dtype = "int16" if subtype == "PCM_16" and channels == 1 and f.samplerate == pcm16_rate else "float32"

        def blocks() -> Iterator[np.ndarray]:
            step = max(f.samplerate, 1) * _BLOCK_SECONDS
            with f:
                while True:
                    block = f.read(step, dtype=dtype, always_2d=True)
                    if len(block):
                        yield block
                    if len(block) < step:  # libsndfile reads short only at the end: no read to find it
                        return

        return _Stream(f.samplerate, channels, declared, fmt.lower(), blocks(), exact, fits)


class PyAVBackend:
    """FFmpeg through PyAV: everything else (AAC/M4A, WebM, odd WAV codecs, damaged headers)."""

    name = "pyav"
    _EXACT_LENGTH_CODECS = ("flac", "pcm_", "wavpack", "alac")

    def open(self, data: IO[bytes], pcm16_rate: Optional[int] = None) -> _Stream:
        import av

        wav_chunk = _wav_data_chunk(data)
        container = av.open(data, mode="r", metadata_errors="ignore")
        if not container.streams.audio:
            container.close()
            raise AudioDecodeError("no audio stream in the container")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        rate = int(ctx.sample_rate or 0)
        channels = int(ctx.channels or 0) if hasattr(ctx, "channels") else int(ctx.layout.nb_channels)
        declared, exact, fits = None, True, True
        wav_chunk = wav_chunk if container.format.name == "wav" else None
        if wav_chunk is not None and ctx.name.startswith("pcm_") and channels and ctx.format is not None:
            declared, fits = wav_chunk[0] // (channels * ctx.format.bytes), wav_chunk[1]
        elif stream.duration and stream.time_base and rate:
            if ctx.name.startswith(self._EXACT_LENGTH_CODECS):
                declared = int(round(float(stream.duration * stream.time_base) * rate))
            elif ctx.name.startswith("mp3"):
                declared, exact = int(round(float(stream.duration * stream.time_base) * rate)), False

        def blocks() -> Iterator[np.ndarray]:
            with container:
                for frame in container.decode(stream):
                    if frame.sample_rate != rate:
                        raise AudioDecodeError(
                            f"sample rate changes mid-stream ({rate} Hz to {frame.sample_rate} Hz)"
                        )
                    yield _frame_to_float(frame)

        return _Stream(rate, channels, declared, f"{container.format.name}/{ctx.name}", blocks(), exact, fits)


DEFAULT_BACKENDS: tuple[AudioBackend, ...] = (SoundfileBackend(), PyAVBackend())


@dataclass(frozen=True)
class _Limits:
    target_rate: int
    min_source_rate: int
    max_source_rate: int
    truncation_tolerance_s: float
    max_duration_s: Optional[float]
    first_s: Optional[float]


def decode_audio(
    data: AudioInput,
    *,
    target_rate: int = TARGET_RATE,
    min_source_rate: int = 1_000,
    max_source_rate: int = 384_000,
    truncation_tolerance_s: float = 0.05,
    backends: tuple[AudioBackend, ...] = DEFAULT_BACKENDS,
    into: Optional[PcmSink] = None,
    max_duration_s: Optional[float] = None,
    keep_samples: Optional[Callable[[DecodedAudio], bool]] = None,
    hold_s: float = HOLD_S,
    first_s: Optional[float] = None,
) -> DecodedAudio:
    """Decode encoded audio to mono `target_rate` 16-bit PCM: in `pcm`, or block by block
    into the sink `into` (then `pcm` is empty and `frames` counts the samples).

    `max_duration_s`: a longer clip raises `ClipTooLong` before its samples are kept: at once
    where a trustworthy header declares its length, else when the stream passes the limit.
    `keep_samples`: a clip longer than `hold_s` streams once to be measured, its samples not
    kept; `keep_samples(measures)` (a `DecodedAudio` with `measured_only`) then says whether to
    decode it again keeping them. None: every clip keeps its samples in one pass.
    `first_s`: only the first seconds (a preview); the stream is read no further.

    Raises `AudioDecodeError` for empty, unrecognised, truncated or implausible input, with
    every backend's reason when none could read it. An error the sink raises is its own and
    propagates as a `SinkError`.
    """
    if data is None or _size(data) == 0:
        raise AudioDecodeError("empty input (0 bytes)")
    limits = _Limits(target_rate, min_source_rate, max_source_rate, truncation_tolerance_s, max_duration_s, first_s)
    hold = hold_s if keep_samples is not None and into is None and first_s is None else None
    failures: list[str] = []
    for backend in backends:
        result = _decode_with(backend, data, limits, into, hold)
        if isinstance(result, DecodedAudio) and result.measured_only and keep_samples(result):
            result = _decode_with(backend, data, limits, into, None)
        if isinstance(result, DecodedAudio):
            return result
        failures.append(f"{backend.name}: {result}")
    reasons = {f.split(": ", 1)[1] for f in failures}
    if len(reasons) == 1:
        raise AudioDecodeError(reasons.pop())
    raise AudioDecodeError("undecodable audio (" + "; ".join(failures) + ")")


def _decode_with(backend: AudioBackend, data: AudioInput, limits: _Limits, into: Optional[PcmSink],
                 hold_s: Optional[float]) -> Union[DecodedAudio, str]:
    """The clip as one backend decodes it, or why that backend could not (a str). A verdict on
    the audio itself (implausible, too long) and the sink's failure are raised instead: another
    backend would only repeat the same content, or worse, guess around it."""
    if into is not None:
        into.clear()
    try:
        stream = backend.open(_reader(data), pcm16_rate=limits.target_rate)
    except AudioDecodeError as e:
        return e.reason
    except Exception as e:  # each library raises its own types; all mean "not readable here"
        return _short(e)
    try:
        return _consume(stream, limits, into, hold_s)
    except _SinkFailed as e:
        raise SinkError(f"{type(e.__cause__).__name__}: {e.__cause__}") from e.__cause__
    except ClipTooLong:
        raise
    except _Implausible as e:
        raise AudioDecodeError(e.reason) from None
    except AudioDecodeError as e:
        return e.reason
    except Exception as e:
        return _short(e)
    finally:
        stream.blocks.close()  # its file handle, before the next backend or pass reads the same file


class _Implausible(AudioDecodeError):
    """The stream opened but its audio cannot be right (rate, length, values)."""


class SinkError(RuntimeError):
    """The sink failed (VAD, a full disk), not the audio: no other backend is tried, and a
    stage lets it fail the task instead of calling the clip corrupt. `__cause__` is the error."""


class _SinkFailed(Exception):
    """The sink's error, carried past the backend's error handling (`__cause__`)."""


def _too_long(stream: _Stream, duration_s: Optional[float], max_s: float) -> ClipTooLong:
    said = f"its header declares {duration_s:.0f} s" if duration_s is not None else "it was decoded no further"
    return ClipTooLong(f"longer than the {max_s:g} s allowed (decode.max_duration_s): {said}", duration_s, max_s,
                       stream.sample_rate, stream.channels, stream.format)


def _consume(stream: _Stream, limits: _Limits, into: Optional[PcmSink], hold_s: Optional[float]) -> DecodedAudio:
    """The stream's blocks mixed to mono, resampled and measured; their samples kept, sent to
    `into`, or (past `hold_s` seconds, or all of them when the header says it is longer)
    measured only. Memory: a block, plus the samples kept."""
    rate, target_rate = stream.sample_rate, limits.target_rate
    if not (limits.min_source_rate <= rate <= limits.max_source_rate):
        raise _Implausible(f"implausible sample rate {rate} Hz "
                           f"(allowed {limits.min_source_rate}-{limits.max_source_rate} Hz)")
    if stream.channels < 1:
        raise _Implausible(f"implausible channel count {stream.channels}")
    trusted = stream.trusted_frames
    max_frames = None
    if limits.max_duration_s is not None:
        max_frames = int(math.ceil(limits.max_duration_s * rate))
        if trusted is not None and trusted > max_frames:
            raise _too_long(stream, trusted / rate, limits.max_duration_s)
    preview_frames = None if limits.first_s is None else max(int(round(limits.first_s * target_rate)), 1)
    hold_frames = None if hold_s is None else int(hold_s * target_rate)
    keeping = into is None and not (hold_s is not None and trusted is not None and trusted > hold_s * rate)
    resampler = None
    if rate != target_rate:
        import soxr

        resampler = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
    parts: list[np.ndarray] = []
    frames = 0
    peak = 0.0
    sumsq = 0.0
    n_out = 0

    def emit(x: np.ndarray) -> None:
        np.clip(x, -1.0, 1.0, out=x)  # once: the levels and the samples are of the same clipped block
        emit_pcm16(np.rint(x * 32767.0).astype(np.int16), float(np.max(np.abs(x), initial=0.0)), float(np.dot(x, x)))

    def emit_pcm16(pcm: np.ndarray, block_peak: float, block_sumsq: float) -> None:
        nonlocal peak, sumsq, n_out, keeping
        if not len(pcm):
            return
        peak = max(peak, block_peak)
        sumsq += block_sumsq
        n_out += len(pcm)
        if into is not None:
            try:
                into.write(pcm)
            except Exception as e:
                raise _SinkFailed() from e
        elif keeping:
            parts.append(pcm)
            if hold_frames is not None and n_out > hold_frames:  # longer than held: measure only
                parts.clear()
                keeping = False

    stopped_early = False
    for block in stream.blocks:
        frames += len(block)
        if max_frames is not None and frames > max_frames:
            raise _too_long(stream, None, limits.max_duration_s)
        if block.dtype == np.int16:  # 16-bit mono at the target rate: the samples themselves
            pcm = block[:, 0]
            y = pcm.astype(np.float32)
            emit_pcm16(pcm, max(-int(pcm.min()), int(pcm.max())) / 32768.0, float(np.dot(y, y)) / 32768.0**2)
        else:
            mono = (block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1
                    else block[:, 0].astype(np.float32, copy=True))
            if not np.isfinite(mono).all():
                raise _Implausible("non-finite sample values (NaN or infinity) in the stream")
            emit(resampler.resample_chunk(mono) if resampler is not None else mono)
        if preview_frames is not None and n_out >= preview_frames:
            stopped_early = True
            break
    if resampler is not None and not stopped_early:
        emit(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    if frames == 0:
        raise AudioDecodeError("no audio samples (the stream is empty)")
    allowed = limits.truncation_tolerance_s * rate
    if stream.declared_frames is not None and not stream.declared_exact:
        allowed = max(allowed, 0.02 * stream.declared_frames)
    if not stopped_early and stream.declared_frames is not None and stream.declared_frames - frames > allowed:
        raise _Implausible(
            f"truncated: header declares {stream.declared_frames / rate:.2f} s, "
            f"stream holds {frames / rate:.2f} s"
        )
    pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
    parts.clear()
    if preview_frames is not None:
        pcm = pcm[:preview_frames]
    return DecodedAudio(
        pcm=pcm,
        sample_rate=target_rate,
        source_sample_rate=rate,
        source_channels=stream.channels,
        source_format=stream.format,
        peak_dbfs=_dbfs(peak),
        rms_dbfs=_dbfs(math.sqrt(sumsq / n_out) if n_out else 0.0),
        frames=len(pcm) if preview_frames is not None else n_out,
        measured_only=into is None and not keeping,
    )


def encode_flac(pcm: np.ndarray, sample_rate: int = TARGET_RATE) -> bytes:
    """16-bit mono PCM to FLAC bytes (lossless, about half the size of the PCM)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def pcm16_to_float32(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


def _frame_to_float(frame) -> np.ndarray:
    """An `av.AudioFrame` to float32 [samples, channels] whatever its sample format."""
    arr = frame.to_ndarray()
    fmt = frame.format
    channels = len(frame.layout.channels)
    if not fmt.is_planar:
        arr = arr.reshape(-1, channels)
    else:
        arr = arr.T
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / 32768.0
    if arr.dtype == np.int32:
        return (arr.astype(np.float64) / 2147483648.0).astype(np.float32)
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / 128.0
    if arr.dtype == np.int64:
        return (arr.astype(np.float64) / 9.223372036854776e18).astype(np.float32)
    return arr.astype(np.float32, copy=False)


def wav_declared_data_bytes(data: bytes) -> Optional[int]:
    """Size of a RIFF/WAVE file's `data` chunk as its header declares it, or None when the
    header does not say (streamed WAVs write 0 or 0xFFFFFFFF there)."""
    return _wav_data_bytes(io.BytesIO(data))


def _bytes_per_sample(subtype: str) -> int:
    return {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4,
            "DOUBLE": 8, "ULAW": 1, "ALAW": 1}.get(subtype, 2)


def levels_dbfs(pcm: np.ndarray) -> tuple[float, float]:
    """Peak and RMS level (dBFS) of 16-bit samples: what the decoder reports for a whole clip,
    for a part of one (a segment)."""
    if not len(pcm):
        return -math.inf, -math.inf
    x = pcm.astype(np.float64) / 32768.0
    return _dbfs(float(np.abs(x).max())), _dbfs(float(np.sqrt(np.mean(x * x))))


def _dbfs(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else -math.inf


def _short(e: Exception) -> str:
    """A library's exception as one readable clause (no object reprs or errno noise)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"Error opening <[^>]*>: ", "", text)
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    text = re.sub(r": '(<none>|avcodec_send_packet\(\))'$", "", text)
    return text.strip().rstrip(".")[:200]
