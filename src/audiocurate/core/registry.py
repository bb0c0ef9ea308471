"""Named implementations of one kind (ASR backends, judge backends, sources, export formats),
registered where they are defined, so adding one is one module and no dispatch code.

>>> ASR_BACKENDS = Registry("ASR backend")                                # doctest: +SKIP
>>> @ASR_BACKENDS.register("toy", config=ToyAsrConfig, engine=Engine("toy", (), False, "-"))
... class ToyTranscriber(ActorTranscriber): ...                           # doctest: +SKIP

A registration says everything about the implementation: its name, the object that runs it,
its configuration class (a `Settings` whose `backend` field is the name; `config.py` validates
a section into it) and its engine facts (`engines.Engine`: the installed versions that change a
result, whether a probe runs it first). A registry may name a module to import for a key not
registered yet, so heavy backends load only when chosen (`lazy`)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Registered(Generic[T]):
    """One registration: the implementation and what it says about itself."""

    name: str
    obj: T
    config: Optional[type] = None  # the settings class of its config section, where it takes one
    engine: Any = None  # `engines.Engine`, for implementations that run a model


class Registry(Generic[T]):
    def __init__(self, kind: str, lazy: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, Registered[T]] = {}
        self._lazy = dict(lazy or {})  # name -> module that registers it when imported

    def register(self, name: str, *, config: Optional[type] = None, engine: Any = None) -> Callable[[T], T]:
        """Decorator (or `register(name, ...)(obj)`) adding `obj` under `name`."""
        def add(obj: T) -> T:
            known = self._entries.get(name)
            if known is not None and known.obj is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Registered(name, obj, config, engine)
            return obj

        return add

    def entry(self, name: str) -> Registered[T]:
        """The registration of `name`, importing the module that makes it when it is lazy."""
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def config_of(self, name: str) -> type:
        """The configuration class `name` registered with."""
        config = self.entry(name).config
        if config is None:
            raise KeyError(f"{self.kind} {name!r} was registered without a config class")
        return config

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
