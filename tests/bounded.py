"""Run Python code in a child process under a memory cap and a watchdog.

The cap is on address space (RLIMIT_AS) *added* to what the child holds once its
imports are done, so numba's, LLVM's and torch's own reservations are not counted
against the work under test. The watchdog is faulthandler's C thread: it needs no
GIL, so it fires inside native code too, exits with status 1 and prints "Timeout".
The child runs at the repository root, where it imports test helpers as
`tests.<folder>.<module>`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PRELUDE = """
import faulthandler, resource, sys

def bound(memory_mb, seconds):
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    cap = vm * 1024 + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    faulthandler.dump_traceback_later(seconds, exit=True)
"""


def run_bounded(
    code: str, *, stdin: str = "", timeout: float = 120.0
) -> subprocess.CompletedProcess:
    """Run `code` (which calls `bound(memory_mb, seconds)` after its imports) in a child.

    `timeout` bounds the whole child, imports included; the child's own `bound` call
    sets the limits that matter.
    """
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
