"""File names inside export archives (tar members, NeMo's audio files, lhotse cut ids), made
from clip ids: ids come from the input and may be anything a string holds (`../../etc/x`,
`/abs/path`, a newline, a thousand characters). Every export names its files with
`member_name`, and keeps the real id in its metadata.
"""

from __future__ import annotations

import hashlib
import re

MAX_STEM = 72  # characters before the hash; stem, hash and extension stay within a POSIX tar header's 100
HASH_HEX = 20  # 80 bits: no two of 10^9 changed ids share a name but once in a million corpora
_SAFE = re.compile(r"[a-z0-9_-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
_HASHED = re.compile(rf".*-[0-9a-f]{{{HASH_HEX}}}")
_EXTENSION = re.compile(r"[a-z0-9]{1,10}")


def member_name(clip_id: str) -> str:
    """A file-name stem for a clip id: the id itself where it is made of lower-case ASCII
    letters, digits, `_` and `-` only (no dot: WebDataset splits a sample's key at the first
    dot, and ids are often file names like `common_voice_en_123.mp3`; no upper case: `A` and
    `a` are one file on a case-insensitive disk) and at most 72 characters; otherwise the last 72
    of the id's ASCII letters, digits, `_` and `-` (path-like ids differ at their end), then `-`
    and 20 hex digits of its SHA-1.

    Distinct ids get distinct names: a kept id never ends like a changed one (an id that does is
    changed too), and two changed ids differ in their hash (80 bits)."""
    if _SAFE.fullmatch(clip_id) and len(clip_id) <= MAX_STEM and not _HASHED.fullmatch(clip_id):
        return clip_id
    stem = _UNSAFE_RUN.sub("_", clip_id).strip("_")[-MAX_STEM:].lstrip("_") or "clip"
    return f"{stem}-{hashlib.sha1(clip_id.encode('utf-8', 'surrogatepass')).hexdigest()[:HASH_HEX]}"


def file_extension(name: str, default: str = "flac") -> str:
    """The lower-case extension of a file name, or `default` where it has none that is 1-10
    ASCII letters and digits (the audio's own `path` is input-derived too)."""
    base = name.rsplit("/", 1)[-1]
    ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    return ext if _EXTENSION.fullmatch(ext) else default
