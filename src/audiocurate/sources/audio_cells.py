"""The encoded audio a row's cell holds or names: bytes, a `{bytes, path}` struct, or a path
read from the source's filesystem (`AudioFetcher`). Decoding (`stages.DecodeStage`) and the
fetch of a clip by id (`sources.audio_by_id`) both read cells through it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.fs as pafs

from ..audio import AudioDecodeError, AudioInput


class AudioFetcher:
    """Reads audio named by path (folder sources, HF rows without bytes) from the source's
    filesystem; relative paths resolve against the source root."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs = fs
        self.root = root.rstrip("/")

    def _full(self, path: str) -> str:
        return path if path.startswith("/") or "://" in path else f"{self.root}/{path}"

    def read(self, path: str) -> bytes:
        full = self._full(path)
        if "://" in full:
            fs, full = pafs.FileSystem.from_uri(full)
        else:
            fs = self.fs
        with _as_decode_error(path):
            with fs.open_input_stream(full, compression=None) as f:
                return f.read()

    def open(self, path: str) -> AudioInput:
        """The file to decode: a local one opened where it lies (decoding streams it, so an
        hour costs no more memory than a minute), a remote one read whole in one request
        (a decoder's many small reads would each be one)."""
        full = self._full(path)
        if "://" in full or not isinstance(self.fs, pafs.LocalFileSystem):
            return self.read(path)
        with _as_decode_error(path):
            return self.fs.open_input_file(full)


@contextmanager
def _as_decode_error(path: str) -> Iterator[None]:
    """A file the row names that cannot be read is that row's error, not the run's."""
    try:
        yield
    except FileNotFoundError:
        raise AudioDecodeError(f"file not found: {path}") from None
    except OSError as e:
        raise AudioDecodeError(f"cannot read {path}: {e}") from None


def audio_bytes_of(value: Any, fetcher: Optional[AudioFetcher]) -> bytes:
    """The encoded audio in a cell: bytes, a `{bytes, path}` struct, or a path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value:
        if fetcher is None:
            raise AudioDecodeError(f"row names a file ({value}) but the source has no filesystem")
        return fetcher.read(value)
    if value is None:
        return b""
    raise AudioDecodeError(f"audio cell holds {type(value).__name__}, not bytes or a path")


def audio_input_of(cell: pa.Scalar, fetcher: Optional[AudioFetcher]) -> AudioInput:
    """`audio_bytes_of` for the decoder, without copying: a binary cell's Arrow buffer as it
    lies in the block (an hour's FLAC is 120 MB), a path's file opened (`AudioFetcher.open`)."""
    if isinstance(cell, pa.StructScalar):
        data = cell.get("bytes") if "bytes" in [f.name for f in cell.type] else None
        if data is not None and data.is_valid and len(data.as_buffer() or b""):
            return data.as_buffer()
        cell = cell.get("path") if "path" in [f.name for f in cell.type] else pa.scalar(None, pa.string())
    if isinstance(cell, (pa.StringScalar, pa.LargeStringScalar)):  # before binary: a string scalar is one
        if cell.is_valid and cell.as_py():
            if fetcher is None:
                raise AudioDecodeError(f"row names a file ({cell.as_py()}) but the source has no filesystem")
            return fetcher.open(cell.as_py())
    elif isinstance(cell, (pa.BinaryScalar, pa.LargeBinaryScalar)) and cell.is_valid:
        return cell.as_buffer()
    return audio_bytes_of(cell.as_py(), fetcher)
