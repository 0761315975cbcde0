"""Shared fixtures: the Triton interpreter switch, real MIDI corpora, seeds, poisoning.

TRITON_INTERPRET must be set before `triton` is first imported, so it is decided here,
at the top of the first module pytest imports: with no CUDA device, Triton kernels run
on CPU tensors under the interpreter.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

if "triton" in sys.modules and "TRITON_INTERPRET" not in os.environ:
    raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET")

import torch  # noqa: E402  (importing torch does not import triton)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from stretto.kernels import testing as kernel_testing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_MIDI = REPO.parent / "shared" / "midi"


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


HAS_TRITON = _triton_importable()


# Folders whose tests run with one torch thread (and modules that set ONE_TORCH_THREAD).
ONE_THREAD_FOLDERS = ("engine", "integrations")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(request):
    """One intra-op thread for the tiny models of `ONE_THREAD_FOLDERS` and the modules
    that ask for it: on a small shared CPU, torch's thread pool spinning against other
    processes made them ten times slower. Module scope: restored for the next module."""
    wanted = request.path.parent.name in ONE_THREAD_FOLDERS or getattr(
        request.module, "ONE_TORCH_THREAD", False
    )
    if not wanted:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is visible to torch")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


def _midi_files(folder: Path) -> list[Path]:
    exts = {".mid", ".midi", ".kar"}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def _corpus_dir(env: str, default: Path) -> Path | None:
    if os.environ.get(env):
        path = Path(os.environ[env])
        if not path.is_dir():
            raise pytest.UsageError(f"${env}={path} is not a folder")
        return path
    return default if default.is_dir() else None


@pytest.fixture(scope="session")
def midi_corpus() -> list[Path]:
    """Real MIDI files: $STRETTO_TEST_CORPUS, else ../shared/midi/dev, else skip."""
    folder = _corpus_dir("STRETTO_TEST_CORPUS", SHARED_MIDI / "dev")
    if folder is None:
        pytest.skip("no MIDI corpus: set STRETTO_TEST_CORPUS or place ../shared/midi/dev")
    files = _midi_files(folder)
    if not files:
        pytest.skip(f"no .mid files in {folder}")
    return files


@pytest.fixture(scope="session")
def malformed_midi() -> list[Path]:
    """Broken and hostile MIDI files: $STRETTO_TEST_MALFORMED, else ../shared/midi/malformed."""
    folder = _corpus_dir("STRETTO_TEST_MALFORMED", SHARED_MIDI / "malformed")
    if folder is None:
        pytest.skip("no malformed corpus: set STRETTO_TEST_MALFORMED or place ../shared/midi")
    return _midi_files(folder)


@pytest.fixture(scope="session")
def corpus_manifest() -> dict[str, dict[str, str]]:
    """Rows of ../shared/midi/manifest.csv by file name (skips where it is absent)."""
    import csv

    path = Path(os.environ.get("STRETTO_TEST_MANIFEST", SHARED_MIDI / "manifest.csv"))
    if not path.is_file():
        pytest.skip("no corpus manifest: set STRETTO_TEST_MANIFEST or place ../shared/midi")
    with path.open(newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def kernel_device() -> str:
    """Where Triton kernels run: CUDA when present, else CPU tensors under the interpreter."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if HAS_CUDA:
        return "cuda"
    assert os.environ.get("TRITON_INTERPRET") == "1", "Triton needs CUDA or TRITON_INTERPRET=1"
    return "cpu"


@pytest.fixture
def poisoned():
    """Kernel outputs are NaN-filled before kernels run, so unwritten elements fail."""
    with kernel_testing.poisoned_outputs():
        yield
