# The two commands: `make demo` and `make test`. Each does the whole set-up on a fresh
# machine (a .venv with torch==2.13.0 installed first, then this package in editable
# mode with its dev extras, every version taken from the committed lock) and is a no-op
# for set-up when nothing changed.
#   make lock         re-resolve the newest versions pyproject.toml's ranges allow and
#                     rewrite the lock (commit it after `make test` passes on it)
#   make test-latest  the suite on the newest versions the ranges allow, in .venv-latest:
#                     an early warning of the next release, not part of CI

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stretto-installed
TORCH_PIN := torch==2.13.0
# Exact versions of everything `make` installs (the `dev` and `demo` extras), for
# CPython 3.11 on Linux x86_64 with the local CPU build of torch: what CI passed with.
LOCK := requirements.lock
PIP := -m pip install --quiet --disable-pip-version-check

# Real MIDI files for the tests, when the shared corpus sits beside the checkout.
SHARED_CORPUS := $(abspath $(wildcard ../shared/midi/dev))
ifneq ($(SHARED_CORPUS),)
export STRETTO_TEST_CORPUS ?= $(SHARED_CORPUS)
endif

.PHONY: install test test-triton36 test-latest lock demo lint fuzz gpu-wheels gpu-rehearsal clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: on a CPU machine the pin takes the local CPU build; later ranges
# (">=2.5,<2.14") are then already satisfied and pull nothing more. The lock is a
# constraints file: every package either extra needs comes at its locked version.
$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) $(PIP) -c $(LOCK) $(TORCH_PIN)
	$(PY) $(PIP) -c $(LOCK) -e ".[dev]"
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

# The lock less triton and numpy, whose versions this venv sets itself.
$(STAMP36): pyproject.toml $(LOCK) | $(PY36)
	grep -vE '^(triton|numpy)==' $(LOCK) >$(VENV36)/constraints.txt
	$(PY36) $(PIP) -c $(VENV36)/constraints.txt $(TORCH_PIN) $(TRITON36) $(NUMPY36)
	$(PY36) $(PIP) -c $(VENV36)/constraints.txt -e ".[dev]" $(TRITON36) $(NUMPY36)
	@touch $(STAMP36)

test-triton36: $(STAMP36)
	$(PY36) -c "import triton; assert triton.__version__ == '3.6.0', triton.__version__"
	$(PY36) -m pytest -q -p no:cacheprovider tests/kernels

# A fresh venv resolves the newest versions the ranges allow, and its freeze becomes
# the lock (pip, setuptools and this package left out).
VENV_LOCK := .venv-lock
lock:
	rm -rf $(VENV_LOCK)
	$(PYTHON) -m venv $(VENV_LOCK)
	$(VENV_LOCK)/bin/python $(PIP) $(TORCH_PIN)
	$(VENV_LOCK)/bin/python $(PIP) -e ".[dev,demo]"
	{ echo "# make lock, $$(date -u +%F): CPython $$($(VENV_LOCK)/bin/python -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())'), CPU torch"; \
	  $(VENV_LOCK)/bin/python -m pip freeze --exclude-editable | grep -vE '^(pip|setuptools|wheel)=='; } >$(LOCK)
	rm -rf $(VENV_LOCK)
	@echo "wrote $(LOCK): $$(grep -c '==' $(LOCK)) packages"

# The newest versions the ranges allow (no lock), in a venv of their own, then the suite.
VENV_LATEST := .venv-latest
test-latest:
	rm -rf $(VENV_LATEST)
	$(PYTHON) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/python $(PIP) $(TORCH_PIN)
	$(VENV_LATEST)/bin/python $(PIP) --upgrade -e ".[dev]"
	$(VENV_LATEST)/bin/python -m pip freeze --exclude-editable | diff $(LOCK) - || true
	$(VENV_LATEST)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# GPU first light (gpu/run.sh). The GPU machines run CPython 3.12 with no
# network and no symusic: `make gpu-wheels` downloads the wheels of what they lack, at
# the lock's versions, into .whl/ (git-ignored), which the run installs from; name .whl
# in the device call's carry. `make gpu-rehearsal` runs the whole script on this CPU
# (Triton's interpreter, tiny shapes) in the Triton 3.6 venv with symusic, muspy and
# music21 hidden as on the GPU image, then checks that every stage wrote its rows
# inside the budget.
GPU_WHEEL_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64,--platform $(p))
gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	    --implementation cp $(GPU_WHEEL_PLATFORMS) -d .whl \
	    $$(grep -iE '^(symusic|pysmartdl|platformdirs)==' $(LOCK))
	@ls .whl

REHEARSAL := /tmp/stretto-gpu-rehearsal
REHEARSAL_BUDGET ?= 300
gpu-rehearsal: $(STAMP36)
	rm -rf $(REHEARSAL)
	OUT=$(REHEARSAL) PYTHON=$(PY36) BENCH_DEVICE=cpu GPU_RUN_BUDGET=$(REHEARSAL_BUDGET) \
	    PYTHONPATH=$(CURDIR)/gpu/image bash gpu/run.sh
	$(PY36) -m gpu.first_light check --out $(REHEARSAL) --budget $(REHEARSAL_BUDGET)

# Arbitrary bytes into MidiTokenizer.encode for FUZZ_SECONDS, seeded from ../shared/midi;
# findings land in tests/data/fuzz/ (replayed by make test). Not part of make test.
FUZZ_SECONDS ?= 300
fuzz: install
	$(PY) tests/fuzz/fuzz_encode.py --seconds $(FUZZ_SECONDS)

# The demo adds music21 (the `demo` extra), whose bundled scores are the default corpus.
# `make demo` replaces runs/demo on every run (--force); move it aside to keep one.
DEMO_STAMP := $(VENV)/.stretto-demo-installed
$(DEMO_STAMP): $(STAMP) $(LOCK)
	$(PY) $(PIP) -c $(LOCK) -e ".[dev,demo]"
	@touch $(DEMO_STAMP)

demo: install $(DEMO_STAMP)
	$(VENV)/bin/stretto demo --force

clean:
	rm -rf $(VENV) $(VENV36) $(VENV_LOCK) $(VENV_LATEST) build *.egg-info .pytest_cache .ruff_cache
