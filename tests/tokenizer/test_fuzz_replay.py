"""Every input saved under tests/data/fuzz/ now behaves.

The folder holds the fuzzer's minimized findings and the regression inputs that
`tests/fuzz/regressions.py` writes byte by byte; it must not be empty, or the replay
would pass without running anything. Each file is run the way the fuzzer ran it
(`fuzz_encode.py --run-one`: a fresh child with an address-space cap and a watchdog),
with the fuzzer's oracle: encode returns ids that decode cleanly and survive
`encode(decode(ids))`, or raises `MidiError`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZER = REPO / "tests" / "fuzz" / "fuzz_encode.py"
FOLDER = REPO / "tests" / "data" / "fuzz"
FINDINGS = sorted(FOLDER.glob("*.mid"))


def test_the_replay_corpus_is_there():
    assert FOLDER.is_dir(), f"{FOLDER} is missing"
    assert FINDINGS, f"no *.mid in {FOLDER}: the replay would run nothing"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
@pytest.mark.parametrize("path", FINDINGS, ids=[p.stem for p in FINDINGS])
def test_fuzz_finding_is_fixed(path):
    cmd = [sys.executable, str(FUZZER), "--run-one", str(path), "--input-timeout", "30"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_findings_are_small():
    for path in FINDINGS:
        assert path.stat().st_size <= 64 * 1024, f"{path.name} is not minimized"
