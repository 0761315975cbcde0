"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they can fail.

`stretto` is a namespace over three root folders that an editable install maps with an
import hook, which import-linter cannot walk; so the check runs on a folder of links
laid out as the installed namespace (`stretto/kernels -> kernels/`, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def copy_source(copy: Path) -> None:
    """Copy what import-linter reads (pyproject.toml, the package folders, benchmarks, gpu).

    Only the source: a checkout may hold virtual environments and wheels beside it
    (CI makes `.venv-triton36/`), gigabytes that one copy per case would put in /tmp.
    """
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    copy.mkdir()
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    skip = shutil.ignore_patterns("__pycache__", "results", "*.egg-info")
    for folder in [*config["package-dir"].values(), "benchmarks", "gpu"]:
        shutil.copytree(REPO / folder, copy / folder, ignore=skip)


def lint_imports(root: Path, links: Path) -> subprocess.CompletedProcess:
    """Run `lint-imports` on the checkout at `root` through a namespace of links."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    namespace = links / "stretto"
    namespace.mkdir(parents=True)
    for name, folder in config["package-dir"].items():
        (namespace / name.split(".")[-1]).symlink_to(root / folder, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=f"{links}{os.pathsep}{root}")
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_are_kept(tmp_path):
    out = lint_imports(REPO, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "BROKEN" not in out.stdout and " 0 broken" in out.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        pytest.param(
            "kernels/rotary.py",
            "import stretto.tokenizer.vocabulary",
            "kernels and tokenizer import nothing of each other",
            id="kernels-imports-tokenizer",
        ),
        pytest.param(
            "engine/model.py",
            "import stretto.engine.audit",
            "the library never imports them",
            id="library-imports-audit",
        ),
        pytest.param(
            "engine/generate.py",
            "import stretto.tokenizer.midi",
            "the engine library uses the tokenizer's vocabulary only",
            id="library-imports-midi",
        ),
        pytest.param(
            "engine/generate.py",
            "import stretto.engine.model",
            "the model sits on its objectives and generation",
            id="generation-imports-the-model",
        ),
        pytest.param(
            "engine/objectives.py",
            "from stretto.engine import model",
            "the model sits on its objectives and generation",
            id="objectives-import-the-model",
        ),
        pytest.param(
            "engine/model.py",
            "import transformers",
            "only integrations import them",
            id="engine-imports-transformers",
        ),
        pytest.param(
            "engine/train.py",
            "import stretto.integrations.lightning",
            "the engine sits on kernels and tokenizer",
            id="engine-imports-integrations",
        ),
        pytest.param(
            "kernels/wha/fused.py",
            "import stretto.kernels.testing",
            "no library module imports kernels.testing",
            id="library-imports-test-support",
        ),
        pytest.param(
            "benchmarks/schema.py",
            "import benchmarks.core",
            "no import cycles",
            id="benchmarks-cycle",
        ),
    ],
)
def test_a_planted_import_breaks_its_contract(tmp_path, module, line, contract):
    copy = tmp_path / "repo"
    copy_source(copy)
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}  # planted\n")
    out = lint_imports(copy, tmp_path / "links")
    assert out.returncode != 0
    broken = " ".join(out.stdout.split("Broken contracts", 1)[-1].split())  # unwrapped
    assert contract in broken, out.stdout
