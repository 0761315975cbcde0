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

.PHONY: install test test-triton36 demo lint fuzz clean

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

# The GPU machines run Triton 3.6: a second venv with the same CPU torch and
# triton==3.6.0 runs the Hopper/A100 compile check and the kernel tests (interpreter).
VENV36   := .venv-triton36
PY36     := $(VENV36)/bin/python
STAMP36  := $(VENV36)/.stretto-installed
TRITON36 := triton==3.6.0
# Triton 3.6's interpreter converts 1-element arrays with int(), which NumPy 2.4 refuses.
NUMPY36  := "numpy<2.4"

$(PY36):
	$(PYTHON) -m venv $(VENV36)

$(STAMP36): pyproject.toml | $(PY36)
	$(PY36) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN) $(TRITON36) $(NUMPY36)
	$(PY36) -m pip install --quiet --disable-pip-version-check -e ".[dev]" $(TRITON36) $(NUMPY36)
	@touch $(STAMP36)

test-triton36: $(STAMP36)
	$(PY36) -c "import triton; assert triton.__version__ == '3.6.0', triton.__version__"
	$(PY36) -m pytest -q -p no:cacheprovider tests/kernels

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
	rm -rf $(VENV) $(VENV36) build *.egg-info .pytest_cache .ruff_cache
