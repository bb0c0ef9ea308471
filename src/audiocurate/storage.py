"""Paths and filesystems: local folders, `s3://` and `gs://` through pyarrow's filesystems.

Every reader and writer of the pipeline gets its filesystem here, so a custom endpoint or
anonymous access is configured once and reaches Ray's readers, our sink and the report. Its
settings (`StorageConfig`, the `source.storage` and `output.storage` sections) live here too:
`config.py` assembles them, and the modules that read and write files need not import it.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pydantic import Field

from .core.settings import SPEED_ONLY_SECTION, Settings


class StorageConfig(Settings):
    """How to reach object storage (`s3://`, `gs://`). Credentials come from the usual
    environment variables or instance metadata, never from this file."""

    model_config = SPEED_ONLY_SECTION

    endpoint_url: Optional[str] = Field(
        None,
        description="Custom endpoint: S3-compatible (e.g. `http://127.0.0.1:9000` for MinIO) or "
        "GCS-compatible (an emulator). The scheme of the URL (http/https) is used for the connection.",
    )
    anonymous: bool = Field(False, description="Access public buckets without credentials.")
    region: Optional[str] = Field(None, description="Bucket region; None lets the client resolve it.")


def resolve(uri: str, storage: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    storage = storage or StorageConfig()
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("s3", "s3a"):
        kwargs: dict = {}
        if storage.endpoint_url:
            ep = urlparse(storage.endpoint_url)
            kwargs["endpoint_override"] = ep.netloc or ep.path
            kwargs["scheme"] = ep.scheme or "https"
        if storage.anonymous:
            kwargs["anonymous"] = True
        if storage.region:
            kwargs["region"] = storage.region
        # No keys go into the filesystem object: it travels pickled to every worker (through
        # the object store and its spill files). Each process resolves credentials itself,
        # from its environment or its instance role; `ray.forward_env` hands the driver's
        # environment variables to the workers through Ray's runtime_env instead.
        return pafs.S3FileSystem(**kwargs), _strip_scheme(uri)
    if scheme in ("gs", "gcs"):
        kwargs = {}
        if storage.anonymous:
            kwargs["anonymous"] = True
        if storage.endpoint_url:
            ep = urlparse(storage.endpoint_url)
            kwargs["endpoint_override"] = ep.netloc
            kwargs["scheme"] = ep.scheme or "https"
        return pafs.GcsFileSystem(**kwargs), _strip_scheme(uri)
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = parsed.path if scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p)


def expand(fs: pafs.FileSystem, path: str, suffixes: tuple[str, ...]) -> list[str]:
    """A file, a folder (searched recursively) or a glob, to the sorted files it names."""
    if any(ch in path for ch in "*?["):
        base = path[: min(path.find(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return sorted(
            i.path for i in infos
            if i.type == pafs.FileType.File and i.path.lower().endswith(suffixes)
            and not any(part.startswith((".", "_")) for part in i.path[len(path):].split("/") if part)
        )
    raise FileNotFoundError(f"no such file or folder: {path}")


def _strip_scheme(uri: str) -> str:
    return uri.split("://", 1)[1]
