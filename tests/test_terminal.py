"""A normal run prints nothing that needs no action."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

NOISE = re.compile(r"\bERROR\b|\bWARNING\b|^\[[^\]]* [EW] \d+ \d+\]", re.M)


def test_harmless_native_lines_are_held_back_and_the_rest_passes():
    code = r'''
import os, sys
from audiocurate.terminal import harmless_native_lines_held_back
with harmless_native_lines_held_back() as held:
    os.write(2, b"[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:2465: Actor with class name: 'MapWorker(X)' and ID: 'ab' has constructor arguments in the object store and max_restarts > 0. If the arguments are spilled\n")
    os.write(2, b"a real problem\n")
    os.write(2, b"progress 50%\r")
print(len(held), file=sys.stdout)
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == b"1"
    assert out.stderr == b"a real problem\nprogress 50%\r"


@pytest.mark.slow
def test_a_normal_run_prints_no_error_or_warning_lines(tmp_path):
    out = subprocess.run([sys.executable, "-m", "audiocurate.cli", "demo", str(tmp_path / "out"), "--limit", "6"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    noise = [ln for ln in (out.stdout + out.stderr).splitlines() if NOISE.search(ln)]
    assert not noise, noise
    assert "accounting      OK" in out.stdout
