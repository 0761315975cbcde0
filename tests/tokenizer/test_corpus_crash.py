"""Crash safety: a corpus build killed (SIGKILL) at chosen points, then resumed.

One helper process imports numba's kernels once, then forks a child per kill point; the
child arms a hook that SIGKILLs itself at that point of the real code path (before an
fsync, just before or just after an `os.replace`) and starts the build. The points
are drawn from seeded RNGs.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.bounded import run_bounded
from tests.kill_points import KILL_HOOKS

from .random_scores import write_random_midi

if not sys.platform.startswith("linux"):
    pytest.skip("fork and SIGKILL semantics are POSIX; /proc is Linux's", allow_module_level=True)

CORPUS_CHILD = """
import json, sys
from pathlib import Path
from stretto.tokenizer import build_corpus

args = json.loads(sys.stdin.read())
src, ref = args["src"], Path(args["ref"])
build = lambda out: build_corpus(src, out, workers=1, progress=False, shard_tokens=400)
build(Path(args["work"]) / "warm")  # numba's first compile renames its cache files
# the uninterrupted run, counting the renames it makes
real_replace, count = os.replace, [0]
def counting(a, b):
    count[0] += 1
    real_replace(a, b)
os.replace = counting
build(ref)
os.replace = real_replace
print(json.dumps({"replaces": count[0]}), flush=True)

def tree(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}

want = tree(ref)
rng = __import__("random").Random(args["seed"])
for j in range(args["kills"]):
    kind = ("before_replace", "after_replace", "fsync")[j % 3]
    at = rng.randrange(count[0])
    out = Path(args["work"]) / f"kill{j}"
    killed = run_killed(kind, at, lambda: build(out))
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    report = build(out)  # resume
    got = tree(out)
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    print(json.dumps({"kind": kind, "at": at, "killed": killed, "left": left,
                      "skipped": report.skipped, "diff": diff}), flush=True)
"""


@pytest.mark.parametrize("seed", [0, 1], ids=["seed0", "seed1"])
def test_build_corpus_killed_then_resumed_equals_an_uninterrupted_build(tmp_path, seed):
    src = tmp_path / "midi"
    src.mkdir()
    write_random_midi(src, 12, seed=seed)
    (src / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x00")  # refused
    args = {"src": str(src), "ref": str(tmp_path / "ref"), "work": str(tmp_path), "seed": seed}
    args["kills"] = 6
    proc = run_bounded(KILL_HOOKS + CORPUS_CHILD, stdin=json.dumps(args), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, *runs = (json.loads(line) for line in proc.stdout.splitlines())
    assert first["replaces"] > 6, "too few shards for kills in the middle"
    assert len(runs) == args["kills"]
    for run in runs:
        assert run["killed"], run
        assert run["diff"] == [], f"resumed build differs: {run}"
    # the kills landed both before any manifest and after some shards were recorded
    assert any(run["skipped"] > 0 for run in runs), runs
