#!/usr/bin/env bash
# Builds llama-cpp-python once per (version, build flags) into a wheelhouse and prints the wheel's path.
#
# Why not `pip install llama-cpp-python`: PyPI has only its source, and a plain build targets the
# building CPU (-march=native). Such a build crashed with SIGILL on another CPU (AMX repacking).
# This build is portable and still uses each CPU's vector units, as CTranslate2 does for Whisper:
# llama.cpp's CPU backend is built once per CPU level (GGML_BACKEND_DL) and, when the judge starts,
# `import llama_cpp` loads the best one the CPU reports (LLAMA_CPP_CPU_LEVEL names another):
#   haswell   AVX2/FMA/F16C/BMI2: Intel Haswell, AMD Zen and later, the floor;
#   skylakex  + AVX-512: Skylake-SP and Cascade Lake Xeons;
#   icelake   + AVX-512 VBMI/VNNI: Ice Lake, Sapphire Rapids and later Xeons, AMD Zen 4 and 5.
# No level has AMX. The levels are chosen by patching the list of llama.cpp's GGML_CPU_ALL_VARIANTS
# (all thirteen would triple the build's time). pip's own wheel cache is bypassed (it keys a built
# wheel by the source only, never by the flags), so a native wheel built earlier can never come back.
# LLAMA_CMAKE_ARGS replaces all of this with your own flags (a CUDA build, say), unpatched.
#
#   scripts/build_llama_cpp.sh PYTHON VERSION   -> path of the wheel (stdout); progress on stderr
set -euo pipefail
python=$1
version=$2
variants="haswell skylakex icelake"
flags="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF}"
patched=$([ -z "${LLAMA_CMAKE_ARGS:-}" ] && echo "cpu variants: $variants" || echo "unpatched")
# The key covers this script too: a change to its patches must never find an old wheel.
key=$(printf '%s %s %s %s %s' "$version" "$flags" "$patched" "$(uname -m)" "$(sha256sum < "$0")" | sha256sum | cut -c1-12)
house="${AUDIOCURATE_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/audiocurate/wheels}/llama-cpp-python-$version-$key"
wheel=$(ls "$house"/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
  echo "    llama.cpp: using the portable build in $house" >&2
  echo "$wheel"
  exit 0
fi
log=$(mktemp -t llama-cpp-build.XXXXXX.log)
rm -rf "$house.tmp" && mkdir -p "$house.tmp"
source="llama-cpp-python==$version"
if [ -z "${LLAMA_CMAKE_ARGS:-}" ]; then
  echo "    llama.cpp $version: fetching the source" >&2
  "$python" -m pip download -q --no-deps --no-binary :all: -d "$house.tmp/src" "llama-cpp-python==$version" >>"$log" 2>&1 \
    || { echo "    could not fetch llama-cpp-python $version's source; the end of $log:" >&2; tail -n 20 "$log" >&2; exit 1; }
  tar -xzf "$house.tmp"/src/llama_cpp_python-*.tar.gz -C "$house.tmp/src"
  source=$(ls -d "$house.tmp"/src/llama_cpp_python-*/)
  "$python" - "$source" $variants <<'PY'
"""Keep the x86 CPU levels named, and install each into the package's lib folder."""
import re, sys
from pathlib import Path

root, keep = Path(sys.argv[1]), sys.argv[2:]
ggml = root / "vendor/llama.cpp/ggml/src/CMakeLists.txt"
text = ggml.read_text()
block = text[text.index('if (GGML_SYSTEM_ARCH STREQUAL "x86")', text.index("if (GGML_CPU_ALL_VARIANTS)")):]
block = block[:block.index("elseif(GGML_SYSTEM_ARCH STREQUAL \"ARM\")")]
lines = [ln for ln in block.splitlines(keepends=True)
         if not (m := re.match(r"\s*ggml_add_cpu_backend_variant\((\w+)", ln)) or m.group(1) in keep]
kept = [m.group(1) for ln in lines if (m := re.match(r"\s*ggml_add_cpu_backend_variant\((\w+)", ln))]
if sorted(kept) != sorted(keep):
    sys.exit(f"llama.cpp's list of CPU variants changed: kept {kept}, wanted {keep}")
ggml.write_text(text.replace(block, "".join(lines)))
top = root / "CMakeLists.txt"
text = top.read_text()
anchor = "    llama_cpp_python_install_target(ggml-cpu)\n"
if anchor not in text:
    sys.exit("llama-cpp-python's CMakeLists.txt no longer installs ggml-cpu where expected")
top.write_text(text.replace(anchor, anchor + "".join(f"    llama_cpp_python_install_target(ggml-cpu-{v})\n" for v in keep)))
# `import llama_cpp` loads a level itself, so that the package works on its own (its server too).
bindings = root / "llama_cpp/llama_cpp.py"
text = bindings.read_text()
anchor = "_lib = load_shared_library(_lib_base_name, _base_path)\n"
if anchor not in text:
    sys.exit("llama-cpp-python no longer loads libllama where expected")
bindings.write_text(text.replace(anchor, anchor + '''

# Added by audiocurate's scripts/build_llama_cpp.sh: llama.cpp's CPU backend is built once per CPU
# level, as modules (GGML_BACKEND_DL). Load the level LLAMA_CPP_CPU_LEVEL names, else the best this
# CPU runs by each module's own score, as ggml_backend_load_all would from its default folders.
def _load_cpu_level():
    from llama_cpp._utils import suppress_stdout_stderr

    modules = {p.name[len("libggml-cpu-"):-len(".so")]: p for p in _base_path.glob("libggml-cpu-*.so")}
    if not modules:
        return None
    # libggml under the name libllama was linked with: under another name the same file is mapped
    # again, with a registry of its own that libllama never reads.
    ggml = ctypes.CDLL(str(min(_base_path.glob("libggml.so.*"), key=lambda p: len(p.name))))
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    scores = {name: ctypes.CDLL(str(path)).ggml_backend_score() for name, path in modules.items()}
    # ggml's score reads CPUID only; the kernel lists what it enabled (it drops AVX-512 from
    # /proc/cpuinfo where it does not save the registers), so a level needs both.
    try:
        with open("/proc/cpuinfo") as info:
            flags = set(next(line.split(":", 1)[1].split() for line in info if line.startswith("flags")))
    except (OSError, StopIteration):
        flags = None
    avx512 = {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
    for name, needs in {"skylakex": avx512, "icelake": avx512 | {"avx512vbmi", "avx512_vnni"}}.items():
        if name in scores and flags is not None and not needs <= flags:
            scores[name] = 0
    level = os.environ.get("LLAMA_CPP_CPU_LEVEL") or max(scores, key=scores.__getitem__)
    if level not in modules:
        raise RuntimeError(f"LLAMA_CPP_CPU_LEVEL={level}: this llama.cpp build has {sorted(modules)}")
    if not scores[level]:
        raise RuntimeError(f"LLAMA_CPP_CPU_LEVEL={level}: this CPU lacks that level's instructions")
    if not ggml.ggml_backend_dev_by_type(0):  # GGML_BACKEND_DEVICE_TYPE_CPU
        with suppress_stdout_stderr(disable=False):  # ggml says which module it loaded
            ggml.ggml_backend_load(str(modules[level]).encode())
    return level


CPU_LEVEL = _load_cpu_level()
'''))
PY
fi
echo "    llama.cpp $version: building from source, portable ($flags; $patched)" >&2
echo "    this takes 4-8 minutes on 2 cores, once per machine; full log: $log" >&2
start=$(date +%s)
# -v makes pip show CMake's and ninja's output; we print ninja's [n/N] steps as progress.
CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$python" -m pip wheel -v --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$house.tmp" \
  "$source" >>"$log" 2>&1 &
pid=$!
last=""
while kill -0 "$pid" 2>/dev/null; do
  sleep 10
  step=$(grep -oE '^\s*\[[0-9]+/[0-9]+\]' "$log" | tail -n 1 | tr -d ' ' || true)
  [ -n "$step" ] && [ "$step" != "$last" ] && echo "    llama.cpp: compiling $step ($(( $(date +%s) - start )) s)" >&2
  last=$step
done
if ! wait "$pid"; then
  echo "    llama.cpp build failed; the end of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
rm -rf "$house.tmp/src" "$house" && mv "$house.tmp" "$house"
echo "    llama.cpp: built in $(( $(date +%s) - start )) s" >&2
ls "$house"/llama_cpp_python-*.whl
