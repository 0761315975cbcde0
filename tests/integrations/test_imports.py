"""The optional frameworks stay optional: importing Stretto's library imports none of
them, and each integration imports only its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

OPTIONAL = ("transformers", "lightning", "pytorch_lightning", "tensorboard")


def imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return set(out.stdout.split())


def test_the_library_imports_no_optional_framework():
    statement = (
        "import stretto.kernels, stretto.engine, stretto.tokenizer, stretto.integrations\n"
        "from stretto.engine import MusicModel, Trainer"
    )
    assert imported_after(statement) == set()


@pytest.mark.parametrize(
    ("module", "framework"),
    [
        ("stretto.integrations.transformers", "transformers"),
        ("stretto.integrations.lightning", "lightning"),
    ],
)
def test_an_integration_imports_its_framework(module, framework):
    pytest.importorskip(framework)
    assert framework in imported_after(f"import {module}")
