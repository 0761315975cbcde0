"""Packaging and the console script."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed():
    """Each folder with an __init__.py under a root package maps to a listed package."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {folder: name for name, folder in config["package-dir"].items()}
    found = set()
    for folder, name in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed


@pytest.mark.parametrize(
    "name", ["stretto.kernels", "stretto.engine", "stretto.tokenizer", "stretto.integrations"]
)
def test_namespace_imports(name):
    __import__(name)


def _stretto(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stretto.engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_version():
    from importlib import metadata

    out = _stretto("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"stretto {metadata.version('stretto')}"


def _subcommands() -> list[str]:
    import argparse

    from stretto.engine.cli import build_parser

    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_cli_help_lists_commands():
    names = _subcommands()
    assert "demo" in names
    out = _stretto("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: stretto")
    for name in names:
        assert re.search(rf"^\s+{name}\s", out.stdout, re.M), name


@pytest.mark.parametrize("name", _subcommands())
def test_every_subcommand_has_help(name):
    out = _stretto(name, "--help")
    assert out.returncode == 0, out.stderr
    # `stretto bench` passes every argument, --help included, to `python -m benchmarks`
    usage = "usage: python -m benchmarks" if name == "bench" else f"usage: stretto {name}"
    assert out.stdout.startswith(usage)


def test_cli_unknown_command_is_a_usage_error():
    out = _stretto("no-such-command")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_the_kernels_folder_under_another_name_registers_nothing():
    """With the checkout's root on sys.path the folder is also a top-level `kernels`, a
    name transformers imports for the Hub's `kernels` package: that import hands the
    name over (or stays empty) and never runs the ops' modules again, or the custom ops
    get registered twice and the duplicate's teardown unregisters the real ones."""
    code = (
        "import gc, sys; sys.path.insert(0, sys.argv[1]);"
        "import torch; import stretto.kernels as k; import kernels;"
        "assert 'kernels.wha.op' not in sys.modules and 'wha' not in vars(kernels);"
        "del sys.modules['kernels']; gc.collect();"
        "q = torch.randn(1, 2, 33, 16, requires_grad=True);"
        "m = torch.ones(1, 33, dtype=torch.bool); m[0, -3:] = False;"
        "k.hierarchical_attention(q, q, q, window=8, block=4, key_padding_mask=m).sum().backward();"
        "print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
