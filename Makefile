# The two commands: `make demo` and `make test`. Each does the whole set-up on a fresh
# machine (a .venv with torch==2.13.0 installed first, then this package in editable
# mode with its dev extras) and is a no-op for set-up when nothing changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stretto-installed
TORCH_PIN := torch==2.13.0

# Real MIDI files for the tests, when the shared corpus sits beside the checkout.
SHARED_CORPUS := $(abspath $(wildcard ../shared/midi/dev))
ifneq ($(SHARED_CORPUS),)
export STRETTO_TEST_CORPUS ?= $(SHARED_CORPUS)
endif

.PHONY: install test demo lint fuzz clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: on a CPU machine the pin takes the local CPU build; later ranges
# (">=2.5,<2.14") are then already satisfied and pull nothing more.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Arbitrary bytes into MidiTokenizer.encode for FUZZ_SECONDS, seeded from ../shared/midi;
# findings land in tests/data/fuzz/ (replayed by make test). Not part of make test.
FUZZ_SECONDS ?= 300
fuzz: install
	$(PY) tests/fuzz/fuzz_encode.py --seconds $(FUZZ_SECONDS)

# The demo adds music21 (the `demo` extra), whose bundled scores are the default corpus.
# `make demo` replaces runs/demo on every run (--force); move it aside to keep one.
DEMO_STAMP := $(VENV)/.stretto-demo-installed
$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,demo]"
	@touch $(DEMO_STAMP)

demo: install $(DEMO_STAMP)
	$(VENV)/bin/stretto demo --force

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
