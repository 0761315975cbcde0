"""The checkout's root is a safe place to run Python.

With the root on sys.path (pytest's rootdir insertion, `python -m`, a script at the
root) the folders `kernels/`, `engine/`, `tokenizer/`, `integrations/` are importable
under their bare names, which belong to other packages on the registry (transformers
imports Hugging Face's `kernels` at start-up). Each command a user starts at the root is
run here in a subprocess twice: with a package `kernels` installed elsewhere (the
environment's own, or a stub distribution when it has none) and without one (a
throwaway venv that links every installed package but `kernels`).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from _stretto_checkout import CHECKOUT_PACKAGES, PACKAGE_FOLDERS, RESERVED_NAMES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A script at the root, as a user would write one: transformers first, then Stretto.
USER_SCRIPT = """
import sys
from transformers import LlamaForCausalLM
import stretto.kernels
import kernels
assert 'wha' not in vars(kernels), "the checkout's kernels/ ran as a top-level package"
print('ok', LlamaForCausalLM.__name__, stretto.kernels.hierarchical_attention.__name__)
print('kernels from', getattr(kernels, '__file__', None))
"""

STUB_KERNELS = '''"""A stand-in for Hugging Face's `kernels`, as transformers imports it."""
__version__ = "0.12.0"
class CUDAProperties: ...
class Device: ...
class KernelizeFallback: ...
class LayerRepository: ...
class LocalLayerRepository: ...
class Mode: ...
def get_kernel(*a, **k): raise RuntimeError("stub")
def kernelize(*a, **k): raise RuntimeError("stub")
def register_kernel_mapping(*a, **k): pass
def replace_kernel_forward_from_hub(*a, **k): pass
def use_kernel_forward_from_hub(*a, **k): return lambda cls: cls
'''


def _has_hub_kernels() -> bool:
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def with_kernels(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(python, env) where an installed `kernels` exists beside the checkout's folder."""
    env = dict(os.environ)
    if not _has_hub_kernels():
        stub = tmp_path_factory.mktemp("stub-kernels")
        (stub / "kernels").mkdir()
        (stub / "kernels" / "__init__.py").write_text(STUB_KERNELS)
        dist = stub / "kernels-0.12.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.12.0\n")
        env["PYTHONPATH"] = str(stub)
    return Path(sys.executable), env


@pytest.fixture(scope="module")
def without_kernels(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(python, env) of a throwaway venv holding links to every installed package but
    `kernels` (its .pth files included, so the editable install of Stretto works)."""
    home = tmp_path_factory.mktemp("no-kernels-venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(home)
    python = home / "bin" / "python"
    target = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    source = Path(sysconfig.get_paths()["purelib"])
    for entry in source.iterdir():
        name = entry.name.lower()
        if name == "kernels" or name.startswith("kernels-"):
            continue
        if not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)
    for script in ("pytest", "stretto"):
        if (BIN / script).exists():
            text = (BIN / script).read_text().splitlines()
            (home / "bin" / script).write_text("\n".join([f"#!{python}", *text[1:]]) + "\n")
            (home / "bin" / script).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return python, env


def _run(args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _commands(python: Path, tmp: Path) -> dict[str, list]:
    bindir = python.parent
    collect = ["--collect-only", "-q", "-p", "no:cacheprovider", "tests/integrations"]
    generate = ["generate", "--quick", "--device", "cpu", "--seq-len", "48", "--no-plots"]
    return {
        "user-script": [python, "-c", USER_SCRIPT],
        "pytest": [bindir / "pytest", *collect],
        "python-m-pytest": [python, "-m", "pytest", *collect],
        "benchmarks-generate": [python, "-m", "benchmarks", *generate, "--out", tmp / "bench"],
        "stretto": [bindir / "stretto", "--help"],
    }


COMMANDS = ["user-script", "pytest", "python-m-pytest", "benchmarks-generate", "stretto"]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("setting", ["with-kernels", "without-kernels"])
def test_commands_work_at_the_root(setting, command, request, tmp_path):
    pytest.importorskip("transformers")
    python, env = request.getfixturevalue(setting.replace("-", "_"))
    out = _run(_commands(python, tmp_path)[command], env)
    assert out.returncode == 0, f"{command} ({setting}) exited {out.returncode}:\n" + (
        out.stdout[-1500:] + out.stderr[-3000:]
    )
    if command == "user-script":
        where = out.stdout.split("kernels from", 1)[1].strip()
        if setting == "with-kernels":
            assert where != "None" and not where.startswith(str(REPO / "kernels")), where
        else:
            assert where.startswith(str(REPO / "kernels")), where  # the empty placeholder


def test_a_bare_name_without_an_installed_package_explains_itself(without_kernels):
    python, env = without_kernels
    code = "import kernels, engine, tokenizer, integrations; kernels.hierarchical_attention"
    out = _run([python, "-c", code], env, timeout=120)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert "AttributeError" in last and "Stretto checkout" in last, last
    assert "stretto.kernels" in last, last


def test_the_layout_reserves_exactly_its_folders():
    """Every package folder at the root is named in RESERVED_NAMES (a new one must be
    guarded or listed), and the README says which names the layout takes."""
    folders = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert folders == set(PACKAGE_FOLDERS) | set(CHECKOUT_PACKAGES)
    for name in PACKAGE_FOLDERS:
        text = (REPO / name / "__init__.py").read_text()
        assert f'if __name__ != "stretto.{name}":' in text and "claim_bare_name" in text, name
    readme = (REPO / "README.md").read_text()
    for name in RESERVED_NAMES:
        assert f"`{name}`" in readme, f"the README does not name the reserved `{name}`"


def test_no_installed_distribution_takes_the_checkouts_own_package_names():
    """`benchmarks` and `tests` are imported under their bare names from the root; an
    installed distribution that also provides one would be shadowed there (or shadow
    ours elsewhere): fail loudly, naming it."""
    taken = importlib.metadata.packages_distributions()
    clashes = {name: taken[name] for name in CHECKOUT_PACKAGES if name in taken}
    assert not clashes, f"installed distributions provide top-level {clashes}"


def test_the_guard_is_what_makes_the_user_script_work(with_kernels, tmp_path):
    """Planted fault: a copy of the checkout whose kernels/__init__.py lacks the guard
    fails the user script at its root, where the real checkout passes."""
    pytest.importorskip("transformers")
    python, env = with_kernels
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in ("_stretto_checkout.py",):
        shutil.copy(REPO / name, copy / name)
    (copy / "kernels").mkdir()
    (copy / "kernels" / "__init__.py").write_text("__all__ = []\n")  # the old placeholder
    out = subprocess.run(
        [str(python), "-c", USER_SCRIPT],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "kernels" in out.stderr
