#!/usr/bin/env bash
# GPU tests and the GPU benchmark suites on a CUDA machine, in at most 8 minutes (one
# 10-minute device call, with room to spare).
#
#   STRETTO_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_run.sh [runner args...]
#
# Installs nothing the machine lacks. `import stretto.kernels` is made to work, in this
# order: it already imports; `pip install --no-deps --no-build-isolation -e .`; else a
# path shim (/tmp/stretto-shim/stretto/{kernels,engine,tokenizer} -> this checkout).
# Wheels placed in .whl/ (e.g. symusic, which GPU images lack) are unpacked into
# /tmp/stretto-site first. STRETTO_COMMIT names the commit where the copy has no .git.
#
# Results: with $OUT set, everything lands in $OUT (results.csv/json/md, the whole run
# folder as results.tar.gz laid out as benchmarks/results/, and the logs), at most 8
# files; otherwise in benchmarks/results/<device>/<date>-<commit>/. The logs (setup,
# GPU tests, benchmarks) are copied into the run folder as well.
# Time: the whole script keeps to GPU_RUN_BUDGET seconds (default 480) from its start:
# GPU tests get at most GPU_TEST_TIMEOUT (default 170), the benchmarks what is left less
# PACK_RESERVE (default 25) for packing the results; each stage is killed at its share,
# and a benchmark run stopped there keeps the suites it finished (tables are written
# after every suite).
# GPU tests: `pytest -m gpu` over tests/kernels and tests/engine with the pinned configs
# (STRETTO_AUTOTUNE unset), on several workers when pytest-xdist is there (Triton
# compiles in parallel); bf16 and fp16 must run, so a skipped one fails the script.
# Extra arguments go to `python -m benchmarks` (e.g. `--quick`, `attention memory`);
# with none: attention, memory, model, generate, in that order.

set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
[[ "$PY" == */* && "$PY" != /* ]] && PY=$REPO/$PY  # the import check runs from /tmp
DEVICE=${BENCH_DEVICE:-cuda}  # cpu only to try this script on a machine without a GPU
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # real kernels on the GPU, never the interpreter
unset STRETTO_AUTOTUNE  # the pinned configs: one compile per kernel variant
START=$(date +%s)
BUDGET=${GPU_RUN_BUDGET:-480}
left() { echo $((BUDGET - ($(date +%s) - START))); }

if [[ -n "${OUT:-}" ]]; then
    LOGS=$OUT
    ROOT=/tmp/stretto-gpu-results
    rm -rf "$ROOT"
else
    LOGS=$(mktemp -d /tmp/stretto-gpu-logs.XXXXXX)  # copied into the run folder at the end
    ROOT=$REPO/benchmarks/results
fi
mkdir -p "$LOGS" "$ROOT"
SETUP_LOG=$LOGS/setup.log
: >"$SETUP_LOG"
say() { echo "[gpu_run] $*" | tee -a "$SETUP_LOG"; }

# -- Python packages: carried wheels, then the stretto namespace ----------------------
if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing carried wheels into /tmp/stretto-site: $(ls .whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/stretto-site .whl/*.whl >>"$SETUP_LOG" 2>&1 &&
        export PYTHONPATH=/tmp/stretto-site${PYTHONPATH:+:$PYTHONPATH}
fi

imports_stretto() { (cd /tmp && "$PY" -c "import stretto.kernels" >>"$SETUP_LOG" 2>&1); }
if imports_stretto; then
    say "stretto already importable"
elif timeout 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    >>"$SETUP_LOG" 2>&1 && imports_stretto; then
    say "installed stretto with pip install --no-deps -e ."
else
    say "pip install failed or unavailable: using a path shim"
    mkdir -p /tmp/stretto-shim/stretto
    for part in kernels engine tokenizer; do
        ln -sfn "$REPO/$part" "/tmp/stretto-shim/stretto/$part"
    done
    export PYTHONPATH=/tmp/stretto-shim${PYTHONPATH:+:$PYTHONPATH}
    imports_stretto || say "stretto.kernels still does not import (see setup.log)"
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" - <<'PY'
import importlib
for name in ("torch", "triton", "numba", "symusic", "miditok", "flash_attn", "matplotlib"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "absent:", type(exc).__name__, exc)
PY
} >>"$SETUP_LOG" 2>&1

# -- GPU tests ----------------------------------------------------------------------
TEST_LIMIT=${GPU_TEST_TIMEOUT:-170}
((TEST_LIMIT > $(left) - 60)) && TEST_LIMIT=$(($(left) - 60))
WORKERS=()
if "$PY" -c "import xdist" >/dev/null 2>&1; then
    WORKERS=(-n "${GPU_TEST_WORKERS:-4}")
fi
JUNIT=/tmp/stretto-gpu-tests.xml
rm -f "$JUNIT"
say "GPU tests: pytest -m gpu tests/kernels tests/engine ${WORKERS[*]} (limit $TEST_LIMIT s)"
timeout -k 10 "$TEST_LIMIT" "$PY" -m pytest -m gpu tests/kernels tests/engine -q -rs \
    -p no:cacheprovider "${WORKERS[@]}" --junitxml="$JUNIT" >"$LOGS/gpu-tests.log" 2>&1
TESTS_RC=$?
say "GPU tests exit code $TESTS_RC: $(tail -n 1 "$LOGS/gpu-tests.log")"
# bf16 and fp16 must have run: a skipped half-precision test fails the script.
HALF_SKIPPED=$("$PY" - "$JUNIT" <<'PY' 2>>"$SETUP_LOG"
import sys
import xml.etree.ElementTree as ET

try:
    cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
except (OSError, ET.ParseError):
    print("no-report")
    raise SystemExit
ran = skipped = 0
for case in cases:
    if "bf16" in case.get("name", "") or "fp16" in case.get("name", ""):
        if case.find("skipped") is not None:
            skipped += 1
        else:
            ran += 1
print(skipped if ran else "none-ran")
PY
)
say "half-precision GPU tests skipped: $HALF_SKIPPED"
[[ "$HALF_SKIPPED" != 0 && "$TESTS_RC" == 0 ]] && TESTS_RC=3

# -- benchmarks ---------------------------------------------------------------------
named_suite=0
for arg in "$@"; do [[ "$arg" != -* ]] && named_suite=1; done
((named_suite)) || set -- "$@" attention memory model generate
BENCH_LIMIT=$(($(left) - ${PACK_RESERVE:-25}))
if [[ -n "${BENCH_TIMEOUT:-}" ]] && ((BENCH_TIMEOUT < BENCH_LIMIT)); then BENCH_LIMIT=$BENCH_TIMEOUT; fi
((BENCH_LIMIT < 10)) && BENCH_LIMIT=10
say "benchmarks: python -m benchmarks --device $DEVICE $* (limit $BENCH_LIMIT s)"
MARK=$(mktemp)  # the run folder is the one written after this file
timeout -k 10 "$BENCH_LIMIT" "$PY" -m benchmarks --device "$DEVICE" \
    --results-root "$ROOT" "$@" >"$LOGS/bench.log" 2>&1
BENCH_RC=$?
say "benchmarks exit code $BENCH_RC (124: stopped at the limit; finished suites are kept)"

RUN_DIR=$(find "$ROOT" -name results.json -newer "$MARK" -printf '%h\n' | head -n 1)
[[ -n "$RUN_DIR" ]] && cp "$LOGS"/setup.log "$LOGS"/gpu-tests.log "$LOGS"/bench.log "$RUN_DIR"/
if [[ -n "${OUT:-}" && -n "$RUN_DIR" ]]; then
    cp "$RUN_DIR"/results.csv "$RUN_DIR"/results.json "$RUN_DIR"/results.md "$OUT"/
    tar -C "$ROOT" -czf "$OUT/results.tar.gz" --exclude README.md .
    say "run folder ${RUN_DIR#"$ROOT"/} packed in results.tar.gz; to commit it here:"
    say "  tar -xzf results.tar.gz -C benchmarks/results &&"
    say "  python -m benchmarks.report benchmarks/results/${RUN_DIR#"$ROOT"/} --readme"
elif [[ -n "$RUN_DIR" ]]; then
    say "results in $RUN_DIR"
else
    say "no results were written (see bench.log)"
fi
say "done in $(($(date +%s) - START)) s of a $BUDGET s budget"
exit $((TESTS_RC != 0 && TESTS_RC != 5 ? TESTS_RC : BENCH_RC))
