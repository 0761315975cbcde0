"""The integration audit: every check a Stretto setup must pass before anyone trains it.

Each check (`checks.py`) is a small function returning `Finding` rows, so a test can
call one on a deliberately broken input and see it reported; `run_audit` (`runner.py`)
strings them together over real files; `stretto audit` prints the table. A row's
`result` is "ok" or "FAIL"; every FAIL is an issue, and a check that cannot run is a
FAIL that says why.
"""

from .checks import DEFAULT_LENGTHS, FAIL, OK, Finding
from .runner import AuditConfig, format_table, issues, run_audit, write_json

__all__ = [
    "DEFAULT_LENGTHS",
    "FAIL",
    "OK",
    "AuditConfig",
    "Finding",
    "format_table",
    "issues",
    "run_audit",
    "write_json",
]
