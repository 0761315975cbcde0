#!/usr/bin/env bash
# GPU first light: one run on a CUDA machine that returns evidence whatever breaks.
#
#   STRETTO_COMMIT=$(git rev-parse HEAD) bash gpu/run.sh
#   BENCH_DEVICE=cpu GPU_RUN_BUDGET=300 bash gpu/run.sh   # the CPU rehearsal
#
# Stages, most valuable first, each a process of its own under `timeout`, each writing
# JSON lines to $OUT the moment it measures something (gpu/first_light.py):
#   1 probe        versions, device, missing packages, measured copy and matmul ceilings
#   2 correctness  every kernel against the float64 reference, raw errors per case
#   3 timing       the benchmark shape against SDPA flash and FlexAttention; N 512..8192
#   4 decode       the base preset's step eager against compiled (CUDA graph), generate
#   5 pytest       `pytest -m gpu tests/kernels` under xdist: pytest.log streams, junit at the end
# $OUT (default: a fresh folder under /tmp) receives at most 8 files: run.log,
# probe.jsonl, correctness.jsonl, timing.jsonl, decode.jsonl, pytest.log,
# pytest-junit.xml. The whole run stops itself inside GPU_RUN_BUDGET seconds (default
# 450): each stage gets a deadline and is killed 10 s past it.
#
# Installs nothing from a network. Wheels in .whl/ (`make gpu-wheels`: symusic for
# CPython 3.12, which GPU images lack) are installed into /tmp/stretto-site;
# `stretto` is made importable with `pip install --no-deps -e .`, else a path shim.

set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
[[ "$PY" == */* && "$PY" != /* ]] && PY=$REPO/$PY
DEVICE=${BENCH_DEVICE:-cuda}
export PYTHONUNBUFFERED=1
unset STRETTO_AUTOTUNE  # the pinned configs: one compile per kernel variant
if [[ "$DEVICE" == cuda ]]; then unset TRITON_INTERPRET; else export TRITON_INTERPRET=1; fi
START=$(date +%s)
BUDGET=${GPU_RUN_BUDGET:-450}
OUT=${OUT:-$(mktemp -d /tmp/stretto-first-light.XXXXXX)}
mkdir -p "$OUT"
LOG=$OUT/run.log
: >"$LOG"
say() { echo "[gpu_run +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# -- set-up: carried wheels, then the stretto namespace --------------------------------
if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing carried wheels into /tmp/stretto-site: $(ls .whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/stretto-site .whl/*.whl >>"$LOG" 2>&1 &&
        export PYTHONPATH=/tmp/stretto-site${PYTHONPATH:+:$PYTHONPATH}
fi
imports_stretto() { (cd /tmp && "$PY" -c "import stretto.kernels, stretto.engine" >>"$LOG" 2>&1); }
if imports_stretto; then
    say "stretto already importable"
elif timeout 90 "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 &&
    imports_stretto; then
    say "installed stretto with pip install --no-deps -e ."
else
    say "pip install failed or unavailable: using a path shim"
    mkdir -p /tmp/stretto-shim/stretto
    for part in kernels engine tokenizer integrations; do
        ln -sfn "$REPO/$part" "/tmp/stretto-shim/stretto/$part"
    done
    export PYTHONPATH=/tmp/stretto-shim${PYTHONPATH:+:$PYTHONPATH}
    imports_stretto || say "stretto.kernels still does not import (see run.log)"
fi

# -- stages 1-4 --------------------------------------------------------------------------
# Each stage ends at a share of what the set-up left (15 s kept for the closing lines).
T0=$(date +%s)
SPAN=$((BUDGET - (T0 - START) - 15))
deadline() { echo $((T0 + SPAN * $1 / 100)); }
stage() {  # stage NAME END_PERCENT
    local until
    until=$(deadline "$2")
    say "stage $1 (until +$((until - START))s)"
    timeout -k 5 $((until - $(date +%s) + 10)) "$PY" -m gpu.first_light "$1" \
        --out "$OUT" --deadline "$until" --device "$DEVICE" >>"$LOG" 2>&1
    say "stage $1 exit code $? (124: killed at its limit; its rows so far are kept)"
}
# GPU_RUN_STAGES picks and orders stages for a rerun (the shares above stay each stage's
# end, so list them in this order): e.g. "probe decode pytest".
STAGES=${GPU_RUN_STAGES:-probe correctness timing decode pytest}
declare -A SHARE=([probe]=8 [correctness]=42 [timing]=64 [decode]=85)
for name in $STAGES; do
    [[ -n "${SHARE[$name]:-}" ]] && stage "$name" "${SHARE[$name]}"
done

# -- stage 5: the pytest GPU sweep with what is left -------------------------------------
END=$((START + BUDGET - 15))
LIMIT=$((END - $(date +%s)))
if [[ " $STAGES " != *" pytest "* ]]; then
    say "stage pytest: not asked for (GPU_RUN_STAGES=$STAGES)"
elif ((LIMIT > 20)); then
    ARGS=(-m gpu ${GPU_PYTEST_PATHS:-tests/kernels} -v -rs -p no:cacheprovider
        --continue-on-collection-errors --junitxml="$OUT/pytest-junit.xml")
    "$PY" -c "import xdist" >/dev/null 2>&1 && ARGS+=(-n "${GPU_TEST_WORKERS:-4}")
    "$PY" -m pytest --help 2>/dev/null | grep -q -- --session-timeout &&
        ARGS+=(--session-timeout=$((LIMIT - 10)))
    say "stage pytest: pytest ${ARGS[*]} (limit $LIMIT s)"
    timeout -k 5 "$LIMIT" "$PY" -m pytest "${ARGS[@]}" >"$OUT/pytest.log" 2>&1
    say "stage pytest exit code $?: $(tail -n 1 "$OUT/pytest.log")"
else
    say "stage pytest: skipped, $LIMIT s left"
fi
say "done in $(($(date +%s) - START)) s of a $BUDGET s budget; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
