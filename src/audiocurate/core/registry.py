"""Named implementations of one kind (ASR backends, judge backends, filters, sources, output
formats), registered where they are defined, so adding one is one module and no dispatch code.

>>> ASR_BACKENDS = Registry("ASR backend")                                # doctest: +SKIP
>>> @ASR_BACKENDS.register("faster_whisper")                              # doctest: +SKIP
... class FasterWhisperTranscriber: ...

A registry may name a module to import for a key not registered yet, so heavy backends load
only when chosen (`lazy`)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, lazy: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy = dict(lazy or {})  # name -> module that registers it when imported

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._lazy))

    def declared(self) -> list[str]:
        """Names in the order the registry declares them (its `lazy` map), then the rest."""
        return [*self._lazy, *(n for n in self._entries if n not in self._lazy)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_object(spec: str) -> Any:
    """`package.module:Name` (or `package.module.Name`) to the object it names."""
    module, _, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module or not attr:
        raise ValueError(f"{spec!r} is not `package.module:Name`")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cannot import {module!r} (from {spec!r}): {e}") from None
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise ValueError(f"module {module!r} has no {attr!r} (from {spec!r})") from None
