"""Wilson 95% intervals for the benchmarks' shares: with tens or a few hundred rows, a figure
moves by points from one row to the next, and a target is met only where its interval says so."""

from __future__ import annotations


def wilson(k: int, n: int) -> list[float] | None:
    """[low, high] of the Wilson 95% interval of k successes in n (None for n = 0)."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(method="wilson")
    return [round(float(ci.low), 3), round(float(ci.high), 3)]
