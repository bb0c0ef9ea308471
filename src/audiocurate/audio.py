"""Decode any audio into 16 kHz mono, or say clearly why not.

Backends are tried in order, libsndfile (`soundfile`) first and PyAV (FFmpeg) second, as in
lhotse's composite backend; when every one fails, one `AudioDecodeError` names each reason.
Decoding streams block by block through a soxr resampler, so a long recording costs its 16 kHz
16-bit samples in memory and never a float copy at the source rate; given a `PcmSink`, not even
those: each block goes to the sink (the segment stage's spool) as it is decoded.

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
from typing import IO, TYPE_CHECKING, Iterator, Optional, Protocol, Union

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

TARGET_RATE = 16_000
_BLOCK_SECONDS = 10


class AudioDecodeError(ValueError):
    """The bytes are not decodable audio; `reason` is a sentence for a human."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
                return None if size in (0, 0xFFFFFFFF) else size
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

        wav_bytes = _wav_data_bytes(data)
        f = sf.SoundFile(data)
        declared: Optional[int] = None
        exact = True
        fmt, subtype, channels = f.format, f.subtype, f.channels  # each a call into libsndfile
        if fmt in ("WAV", "WAVEX", "RF64"):
            # libsndfile trims a WAV's frame count to the bytes present; the header knows better.
            data_bytes = wav_bytes
            if data_bytes is not None and channels > 0:
                declared = data_bytes // (channels * _bytes_per_sample(subtype))
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

        return _Stream(f.samplerate, channels, declared, fmt.lower(), blocks(), exact)


class PyAVBackend:
    """FFmpeg through PyAV: everything else (AAC/M4A, WebM, odd WAV codecs, damaged headers)."""

    name = "pyav"
    _EXACT_LENGTH_CODECS = ("flac", "pcm_", "wavpack", "alac")

    def open(self, data: IO[bytes], pcm16_rate: Optional[int] = None) -> _Stream:
        import av

        wav_bytes = _wav_data_bytes(data)
        container = av.open(data, mode="r", metadata_errors="ignore")
        if not container.streams.audio:
            container.close()
            raise AudioDecodeError("no audio stream in the container")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        rate = int(ctx.sample_rate or 0)
        channels = int(ctx.channels or 0) if hasattr(ctx, "channels") else int(ctx.layout.nb_channels)
        declared, exact = None, True
        wav_bytes = wav_bytes if container.format.name == "wav" else None
        if wav_bytes is not None and ctx.name.startswith("pcm_") and channels and ctx.format is not None:
            declared = wav_bytes // (channels * ctx.format.bytes)
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

        return _Stream(rate, channels, declared, f"{container.format.name}/{ctx.name}", blocks(), exact)


DEFAULT_BACKENDS: tuple[AudioBackend, ...] = (SoundfileBackend(), PyAVBackend())


def decode_audio(
    data: AudioInput,
    *,
    target_rate: int = TARGET_RATE,
    min_source_rate: int = 1_000,
    max_source_rate: int = 384_000,
    truncation_tolerance_s: float = 0.05,
    backends: tuple[AudioBackend, ...] = DEFAULT_BACKENDS,
    into: Optional[PcmSink] = None,
) -> DecodedAudio:
    """Decode encoded audio to mono `target_rate` 16-bit PCM: in `pcm`, or block by block
    into the sink `into` (then `pcm` is empty and `frames` counts the samples).

    Raises `AudioDecodeError` for empty, unrecognised, truncated or implausible input, with
    every backend's reason when none could read it. An error the sink raises is its own and
    propagates as a `SinkError`.
    """
    if data is None or _size(data) == 0:
        raise AudioDecodeError("empty input (0 bytes)")
    failures: list[str] = []
    for backend in backends:
        if into is not None:
            into.clear()
        try:
            stream = backend.open(_reader(data), pcm16_rate=target_rate)
        except AudioDecodeError as e:
            failures.append(f"{backend.name}: {e.reason}")
            continue
        except Exception as e:  # each library raises its own types; all mean "not readable here"
            failures.append(f"{backend.name}: {_short(e)}")
            continue
        try:
            return _consume(stream, target_rate, min_source_rate, max_source_rate, truncation_tolerance_s, into)
        except _SinkFailed as e:
            raise SinkError(f"{type(e.__cause__).__name__}: {e.__cause__}") from e.__cause__
        except _Implausible as e:  # a verdict on the audio itself, not on the backend
            raise AudioDecodeError(e.reason) from None
        except AudioDecodeError as e:
            failures.append(f"{backend.name}: {e.reason}")
        except Exception as e:
            failures.append(f"{backend.name}: {_short(e)}")
        stream.blocks.close()  # its file handle, before the next backend reads the same file
    reasons = {f.split(": ", 1)[1] for f in failures}
    if len(reasons) == 1:
        raise AudioDecodeError(reasons.pop())
    raise AudioDecodeError("undecodable audio (" + "; ".join(failures) + ")")


class _Implausible(AudioDecodeError):
    """The stream opened but its audio cannot be right (rate, length, values); another
    backend would only repeat the same content, or worse, guess around it."""


class SinkError(RuntimeError):
    """The sink failed (VAD, a full disk), not the audio: no other backend is tried, and a
    stage lets it fail the task instead of calling the clip corrupt. `__cause__` is the error."""


class _SinkFailed(Exception):
    """The sink's error, carried past the backend's error handling (`__cause__`)."""


def _consume(stream: _Stream, target_rate: int, min_rate: int, max_rate: int, tol_s: float,
             into: Optional[PcmSink] = None) -> DecodedAudio:
    if not (min_rate <= stream.sample_rate <= max_rate):
        raise _Implausible(f"implausible sample rate {stream.sample_rate} Hz (allowed {min_rate}-{max_rate} Hz)")
    if stream.channels < 1:
        raise _Implausible(f"implausible channel count {stream.channels}")
    resampler = None
    if stream.sample_rate != target_rate:
        import soxr

        resampler = soxr.ResampleStream(stream.sample_rate, target_rate, 1, dtype="float32", quality="HQ")
    parts: list[np.ndarray] = []
    frames = 0
    peak = 0.0
    sumsq = 0.0
    n_out = 0

    def emit(x: np.ndarray) -> None:
        np.clip(x, -1.0, 1.0, out=x)  # once: the levels and the samples are of the same clipped block
        emit_pcm16(np.rint(x * 32767.0).astype(np.int16), float(np.max(np.abs(x), initial=0.0)), float(np.dot(x, x)))

    def emit_pcm16(pcm: np.ndarray, block_peak: float, block_sumsq: float) -> None:
        nonlocal peak, sumsq, n_out
        if not len(pcm):
            return
        peak = max(peak, block_peak)
        sumsq += block_sumsq
        n_out += len(pcm)
        if into is None:
            parts.append(pcm)
            return
        try:
            into.write(pcm)
        except Exception as e:
            raise _SinkFailed() from e

    for block in stream.blocks:
        frames += len(block)
        if block.dtype == np.int16:  # 16-bit mono at the target rate: the samples themselves
            pcm = block[:, 0]
            y = pcm.astype(np.float32)
            emit_pcm16(pcm, max(-int(pcm.min()), int(pcm.max())) / 32768.0, float(np.dot(y, y)) / 32768.0**2)
            continue
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0].astype(np.float32, copy=True)
        if not np.isfinite(mono).all():
            raise _Implausible("non-finite sample values (NaN or infinity) in the stream")
        emit(resampler.resample_chunk(mono) if resampler is not None else mono)
    if resampler is not None:
        emit(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    if frames == 0:
        raise AudioDecodeError("no audio samples (the stream is empty)")
    allowed = tol_s * stream.sample_rate
    if stream.declared_frames is not None and not stream.declared_exact:
        allowed = max(allowed, 0.02 * stream.declared_frames)
    if stream.declared_frames is not None and stream.declared_frames - frames > allowed:
        raise _Implausible(
            f"truncated: header declares {stream.declared_frames / stream.sample_rate:.2f} s, "
            f"stream holds {frames / stream.sample_rate:.2f} s"
        )
    pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
    return DecodedAudio(
        pcm=pcm,
        sample_rate=target_rate,
        source_sample_rate=stream.sample_rate,
        source_channels=stream.channels,
        source_format=stream.format,
        peak_dbfs=_dbfs(peak),
        rms_dbfs=_dbfs(math.sqrt(sumsq / n_out) if n_out else 0.0),
        frames=n_out,
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
