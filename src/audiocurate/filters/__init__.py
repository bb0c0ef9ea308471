"""Filters: cheap signals before expensive ones (see `filters.base` for the API).

`build_filters` turns the configuration into filter objects, built-ins and your own, in run
order; `place_filters` puts each at the earliest stage whose columns cover its `needs`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..core.registry import import_object
from .base import FILTERS, Filter
from .text import corpus_wer, max_consecutive_ngram_repeats, normalize_text, word_error_rate

if TYPE_CHECKING:
    from ..config import PipelineConfig

__all__ = ["FILTERS", "Filter", "FilterPlacementError", "build_filters", "place_filters", "corpus_wer",
           "max_consecutive_ngram_repeats", "normalize_text", "word_error_rate"]

BUILT_IN_ORDER = tuple(FILTERS.declared())


class FilterPlacementError(ValueError):
    """A filter needs a column that neither the input nor any stage provides."""


def build_filters(config: "PipelineConfig", input_columns: Iterable[str]) -> list[Filter]:
    """The configured filters in run order: built-ins that are on, then `filters.custom`,
    both reordered by `filters.order` when it is set."""
    columns = set(input_columns)
    named: dict[str, Filter] = {}
    for name in BUILT_IN_ORDER:
        f = FILTERS.get(name).configured(config, columns)
        if f is not None and f.needs:  # nothing to read under this configuration: nothing to decide
            named[name] = f
    for i, spec in enumerate(config.filters.custom):
        f = load_custom_filter(spec.type, spec.args)
        key = spec.name or f.name or type(f).__name__
        if key in named:
            raise ValueError(f"filters.custom[{i}]: a filter named {key!r} exists already; give it another `name`")
        named[key] = f
    order = config.filters.order
    if order is None:
        return list(named.values())
    unknown = [n for n in order if n not in named and n not in BUILT_IN_ORDER]
    if unknown:
        raise ValueError(f"filters.order names {unknown}, which are neither built-in ({', '.join(BUILT_IN_ORDER)}) "
                         f"nor a custom filter's name ({', '.join(n for n in named if n not in BUILT_IN_ORDER)})")
    ranked = [named[n] for n in order if n in named]
    return ranked + [f for n, f in named.items() if n not in order]


def load_custom_filter(spec: str, args: Mapping[str, Any]) -> Filter:
    """Your filter class, from `package.module:Class`, built with `args` as keyword arguments.

    Its module is pickled by value when Ray ships the stages, so workers need not be able to
    import it (a module beside your config, not installed anywhere, works on a cluster too)."""
    from ray import cloudpickle  # Ray's own copy pickles the stages; the PyPI one is another registry

    cls = import_object(spec)
    if not (isinstance(cls, type) and issubclass(cls, Filter)):
        raise ValueError(f"{spec} is not a subclass of audiocurate.filters.Filter")
    module = __import__(cls.__module__, fromlist=["_"])
    if not cls.__module__.startswith("audiocurate."):
        cloudpickle.register_pickle_by_value(module)
    try:
        f = cls(**dict(args))
    except TypeError as e:
        raise ValueError(f"{spec}: cannot build it with args {dict(args)}: {e}") from None
    if not f.needs:
        raise ValueError(f"{spec} declares no `needs`: list the columns its `reason` reads")
    return f


def place_filters(filters: Sequence[Filter], points: Sequence[tuple[str, Iterable[str]]]) -> dict[str, list[Filter]]:
    """Each filter at the first point (stage name, columns available there) that has all it
    needs; run order is kept within a point."""
    placed: dict[str, list[Filter]] = {name: [] for name, _ in points}
    available = [(name, set(cols)) for name, cols in points]
    for f in filters:
        for name, cols in available:
            if set(f.needs) <= cols:
                placed[name].append(f)
                break
        else:
            everything = set().union(*(c for _, c in available)) if available else set()
            missing = sorted(set(f.needs) - everything)
            raise FilterPlacementError(f"filter {f!r} needs {missing}, which neither the input nor any stage provides")
    return placed
