#!/usr/bin/env bash
# Builds llama-cpp-python once per (version, build flags) into a wheelhouse and prints the wheel's path.
#
# Why not `pip install llama-cpp-python`: PyPI has only its source, and a plain build targets the
# building CPU (-march=native). Such a build crashed with SIGILL on another CPU (AMX repacking).
# This build is portable: x86-64 with AVX2/FMA/F16C/BMI2 (Intel Haswell, AMD Zen and later), no
# AVX-512, no AMX. pip's own wheel cache is bypassed (it keys a built wheel by the source only,
# never by the flags), so a native wheel built earlier can never come back from it.
#
#   scripts/build_llama_cpp.sh PYTHON VERSION   -> path of the wheel (stdout); progress on stderr
set -euo pipefail
python=$1
version=$2
flags="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF}"
key=$(printf '%s %s %s' "$version" "$flags" "$(uname -m)" | sha256sum | cut -c1-12)
house="${AUDIOCURATE_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/audiocurate/wheels}/llama-cpp-python-$version-$key"
wheel=$(ls "$house"/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
  echo "    llama.cpp: using the portable build in $house" >&2
  echo "$wheel"
  exit 0
fi
log=$(mktemp -t llama-cpp-build.XXXXXX.log)
echo "    llama.cpp $version: building from source, portable ($flags)" >&2
echo "    this takes 3-6 minutes on 2 cores, once per machine; full log: $log" >&2
mkdir -p "$house.tmp"
start=$(date +%s)
# -v makes pip show CMake's and ninja's output; we print ninja's [n/N] steps as progress.
CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$python" -m pip wheel -v --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$house.tmp" \
  "llama-cpp-python==$version" >"$log" 2>&1 &
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
rm -rf "$house" && mv "$house.tmp" "$house"
echo "    llama.cpp: built in $(( $(date +%s) - start )) s" >&2
ls "$house"/llama_cpp_python-*.whl
