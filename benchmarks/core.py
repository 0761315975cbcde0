"""The runner: find the suites, run them, enrich and normalise every row, write a run.

A suite is a module `benchmarks.<name>_bench` with `run(*, quick, device) -> list[dict]`;
it may also take `seq_lens` and `presets` (the `--seq-len` and `--preset` filters,
None when not given), which the runner passes only to a suite whose `run` names them.
The model, memory and generate suites run any positive length they are given. A suite
in TABLE_SWEEP_SUITES that takes no `seq_lens` (attention) runs its whole sweep of the
shape table and the runner keeps the rows of the requested lengths; a length outside
that sweep is an error before anything runs. A run's filters (suites, lengths,
presets) are recorded in its metadata and printed beside "quick run"/"full run", so a
partial run never reads as a full one. Suite options (`SUITE_OPTIONS`: the quality
suite's corpus and training budget) reach only the suites whose `run` names them, and
are recorded in the metadata too; a suite whose `run` takes `out_dir` is given the
run's folder, for files beside the tables (the quality suite's `split.json`).

Each row names what was measured (suite, provider, mode, shape, dtype) and what was
found (median_ms, p20_ms, p80_ms, peak_mem_mb, optional tokens_per_s, tflops, extra);
a row whose `status` starts with "skipped:" or "error:" carries no numbers. The runner
adds the environment (device, versions, commit, date) to every row.
"""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import math
import os
import platform
import re
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.schema import (
    ENV_FIELDS,
    MEASURED_FIELDS,
    OPT_IN_SUITES,
    REPO_ROOT,
    RESULTS_ROOT,
    ROW_FIELDS,
    SUITE_OPTIONS,
    SUITES,
    TABLE_SWEEP_SUITES,
    SuiteUnavailable,
    is_measured,
    progress,
    skipped_row,
)

_SEQ_KEYS = ("seq_len", "N", "T", "L")  # in a shape dict; `extra` is read for seq_len only
_SEQ_IN_LABEL = re.compile(r"(?:^|[-_ ,x])(?:N|L|T|seq|seq_len|len)=?(\d+)(?=$|[-_ ,x])")


def _shape_label(shape: Any) -> str:
    if shape is None:
        return "-"
    if isinstance(shape, Mapping):
        return "-".join(f"{k}{v}" for k, v in shape.items())
    if isinstance(shape, list | tuple):
        return "x".join(str(s) for s in shape)
    return str(shape)


def _seq_len(row: Mapping[str, Any]) -> int | None:
    candidates: list[Any] = [row.get("seq_len")]
    if isinstance(row.get("shape"), Mapping):
        candidates += [row["shape"].get(k) for k in _SEQ_KEYS]
    if isinstance(row.get("extra"), Mapping):
        candidates.append(row["extra"].get("seq_len"))
    for value in candidates:
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return int(value)
    if isinstance(row.get("shape"), str):
        match = _SEQ_IN_LABEL.search(row["shape"])
        if match:
            return int(match.group(1))
    return None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def normalize_row(row: Mapping[str, Any], suite: str, env: Mapping[str, Any]) -> dict[str, Any]:
    """One row in the common schema: known fields typed, unknown keys moved to `extra`."""
    extra = row.get("extra") or {}
    extra = dict(extra) if isinstance(extra, Mapping) else {"value": extra}
    out: dict[str, Any] = {
        "suite": str(row.get("suite") or suite),
        "provider": str(row.get("provider") or "-"),
        "mode": str(row.get("mode") or "-"),
        "shape": _shape_label(row.get("shape")),
        "seq_len": _seq_len(row),
        "dtype": str(row.get("dtype") or "-").removeprefix("torch."),
    }
    for field in MEASURED_FIELDS:
        out[field] = _number(row.get(field))
    status = row.get("status")
    if status is None and row.get("skipped"):
        status = f"skipped: {row['skipped']}"
    # one line, so that a multi-line exception message cannot break the tables
    out["status"] = " ".join(str(status).split())[:500] if status else "ok"
    for field in ENV_FIELDS:
        out[field] = env.get(field)
    for key, value in row.items():
        if key not in ROW_FIELDS and key != "skipped":
            extra.setdefault(key, value)
    out["extra"] = extra
    return out


# -- environment --------------------------------------------------------------------


def resolve_device(device: str | None) -> str:
    """`cuda` when asked for or available, else `cpu`; absent CUDA asked for is an error."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    return f"{_cpu_name()} ({os.cpu_count()} cores)"


def device_slug(device: str, name: str | None = None) -> str:
    """Folder name of a device: `nvidia-h100-80gb-hbm3`, `cpu-intel-xeon-platinum-8481c`."""
    name = name or device_name(device)
    name = re.sub(r"\((?:R|TM|tm|r)\)|\(\d+ cores\)|@.*$|\bCPU\b|\bProcessor\b", " ", name)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"
    if not device.startswith("cuda") and not slug.startswith("cpu"):
        slug = f"cpu-{slug}"
    return slug


def git_commit(root: Path = REPO_ROOT) -> tuple[str, bool]:
    """(commit, dirty) of the checkout; $STRETTO_COMMIT where there is no .git."""
    if os.environ.get("STRETTO_COMMIT"):
        return os.environ["STRETTO_COMMIT"], False
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(dirty)


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # absent or broken: recorded as missing
        return None


def stretto_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("stretto")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def environment(device: str) -> dict[str, Any]:
    """What every row records about where and from what it was measured."""
    import torch

    commit, dirty = git_commit()
    now = dt.datetime.now(dt.UTC)
    env: dict[str, Any] = {
        "device": device_name(device),
        "device_slug": device_slug(device),
        "device_kind": device,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "stretto": stretto_version(),
        "commit": commit,
        "commit_dirty": dirty,
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
    }
    if device.startswith("cuda"):
        env["cuda"] = torch.version.cuda
    return env


def default_out_dir(env: Mapping[str, Any], root: Path = RESULTS_ROOT) -> Path:
    """`benchmarks/results/<device-slug>/<YYYY-MM-DD>-<shortcommit>/`, or with `-2`, `-3`,
    ... after it when a run of the same day and commit already has that folder: a second
    run never overwrites the first."""
    short = str(env["commit"])[:7] + ("-dirty" if env.get("commit_dirty") else "")
    first = root / str(env["device_slug"]) / f"{str(env['date'])[:10]}-{short}"
    folder, n = first, 1
    while folder.exists():
        n += 1
        folder = first.with_name(f"{first.name}-{n}")
    return folder


# -- running ------------------------------------------------------------------------


def load_suite(name: str, registry: Mapping[str, str | Callable[..., Any]] = SUITES):
    """The `run` callable of suite `name`; SuiteUnavailable when it cannot be imported."""
    if name not in registry:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(registry)}")
    target = registry[name]
    if callable(target):
        return target
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing == target:
            path = target.replace(".", "/") + ".py"
            raise SuiteUnavailable(f"{path} is not there") from exc
        raise SuiteUnavailable(f"{type(exc).__name__}: {exc}") from exc
    run = getattr(module, "run", None)
    if not callable(run):
        raise SuiteUnavailable(f"{target} has no run(*, quick, device) function")
    return run


def takes_keyword(run: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(run).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def call_suite(
    run: Callable[..., Any],
    *,
    quick: bool,
    device: str,
    seq_lens: Sequence[int] | None = None,
    presets: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Call a suite's `run`, passing only the keywords it takes.

    `seq_lens`, `presets` and each of `options` (SUITE_OPTIONS, `out_dir`) are passed
    only when given; a suite that takes no `seq_lens` has its rows filtered by length
    here (rows without a length stay).
    """
    given = {"quick": quick, "device": device, "seq_lens": seq_lens, "presets": presets}
    given.update(options or {})
    kwargs = {
        k: (list(v) if k in ("seq_lens", "presets") else v)
        for k, v in given.items()
        if (v is not None or k in ("quick", "device")) and takes_keyword(run, k)
    }
    rows = [dict(r) for r in (run(**kwargs) or [])]
    if seq_lens is not None and "seq_lens" not in kwargs:
        wanted = set(seq_lens)
        rows = [r for r in rows if _seq_len(r) is None or _seq_len(r) in wanted]
    return rows


def table_sweep(quick: bool) -> tuple[int, ...]:
    """Lengths a TABLE_SWEEP_SUITES suite sweeps (see `benchmarks.shapes`)."""
    from benchmarks import shapes

    return shapes.seq_lens(quick=quick, scaling=True)


def check_filters(
    names: Sequence[str],
    registry: Mapping[str, str | Callable[..., Any]],
    *,
    quick: bool,
    seq_lens: Sequence[int] | None,
    presets: Sequence[str] | None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """ValueError naming the offending value when a filter cannot be honoured."""
    for key, value in (options or {}).items():
        if key not in SUITE_OPTIONS:
            raise ValueError(f"unknown suite option {key!r}; known: {', '.join(SUITE_OPTIONS)}")
        if value is None:
            continue
        takers = []
        for name in names:
            try:
                if takes_keyword(load_suite(name, registry), key):
                    takers.append(name)
            except SuiteUnavailable:
                continue
        if not takers:
            raise ValueError(
                f"--{key} is an option of a suite this run does not include ({', '.join(names)})"
            )
    for n in seq_lens or ():
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"a sequence length must be a positive integer, got {n!r}")
    for b in (options or {}).get("batches") or ():
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ValueError(f"a batch size must be a positive integer, got {b!r}")
    if seq_lens:
        for name in names:
            if name not in TABLE_SWEEP_SUITES:
                continue
            try:
                if takes_keyword(load_suite(name, registry), "seq_lens"):
                    continue
            except SuiteUnavailable:
                continue  # its row reads skipped whatever the lengths
            allowed = table_sweep(quick)
            outside = [n for n in seq_lens if n not in allowed]
            if outside:
                raise ValueError(
                    f"--seq-len {outside[0]} is not in the {name} suite's "
                    f"{'quick ' if quick else ''}sweep; choose from "
                    f"{', '.join(map(str, allowed))}"
                )
    if presets:
        try:
            from stretto.engine import PRESETS
        except ImportError:  # the model suites report themselves skipped
            return
        for preset in presets:
            if preset not in PRESETS:
                raise ValueError(
                    f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}"
                )


def run_filters(
    names: Sequence[str],
    registry: Mapping[str, Any],
    seq_lens: Sequence[int] | None,
    presets: Sequence[str] | None,
) -> dict[str, list]:
    """What restricted this run: a subset of suites, lengths, presets (empty: none)."""
    filters: dict[str, list] = {}
    if set(names) != set(registry):  # every suite, in any order, is no filter
        filters["suites"] = list(names)
    if seq_lens:
        filters["seq_len"] = sorted(set(seq_lens))
    if presets:
        filters["preset"] = list(dict.fromkeys(presets))
    return filters


@dataclass
class RunResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if str(r["status"]).startswith("error")]


def run_suites(
    names: Iterable[str],
    *,
    quick: bool,
    device: str,
    env: Mapping[str, Any],
    registry: Mapping[str, str | Callable[..., Any]] = SUITES,
    seq_lens: Sequence[int] | None = None,
    presets: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    log=None,
) -> list[dict[str, Any]]:
    """Run each suite in turn; a missing or failing suite becomes a row, never a gap."""
    log = log or progress
    rows: list[dict[str, Any]] = []
    for name in names:
        start = time.perf_counter()
        log(f"[benchmarks] {name}: running ({'quick' if quick else 'full'}, {device})")
        try:
            suite_rows = call_suite(
                load_suite(name, registry),
                quick=quick,
                device=device,
                seq_lens=seq_lens,
                presets=presets,
                options=options,
            )
            if not suite_rows:
                suite_rows = [skipped_row(name, "skipped: the suite returned no rows")]
        except SuiteUnavailable as exc:
            suite_rows = [skipped_row(name, f"skipped: {exc}")]
        except ImportError as exc:  # a dependency imported lazily inside run()
            suite_rows = [skipped_row(name, f"skipped: {type(exc).__name__}: {exc}")]
        except Exception as exc:
            traceback.print_exc()
            suite_rows = [
                {"suite": name, "provider": "-", "status": f"error: {type(exc).__name__}: {exc}"}
            ]
        normalized = [normalize_row(r, name, env) for r in suite_rows]
        rows += normalized
        measured = sum(is_measured(r) for r in normalized)
        log(
            f"[benchmarks] {name}: {len(normalized)} rows ({measured} measured) "
            f"in {time.perf_counter() - start:.1f} s"
        )
    return rows


def run_benchmarks(
    names: Iterable[str] | None = None,
    *,
    quick: bool = False,
    device: str | None = None,
    out_dir: Path | None = None,
    registry: Mapping[str, str | Callable[..., Any]] = SUITES,
    results_root: Path = RESULTS_ROOT,
    update_readme: bool | None = None,
    plots: bool = True,
    seq_lens: Sequence[int] | None = None,
    presets: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    log=None,
) -> RunResult:
    """Run suites and write results.{csv,json,md} and plots into one folder.

    `seq_lens` and `presets` restrict the suites that sweep lengths and presets (see
    the module docstring); they are checked before anything runs and recorded in the
    run's `meta["filters"]`. `options` (SUITE_OPTIONS) go to the suites that take them
    and are recorded in `meta["options"]`. `update_readme` (default: when the folder lies under
    `results_root`) rewrites this device's section of `results_root/README.md`,
    keeping the other devices' sections.
    """
    names = list(names or [n for n in registry if n not in OPT_IN_SUITES])
    for name in names:
        if name not in registry:
            raise ValueError(f"unknown suite {name!r}; known: {', '.join(registry)}")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    check_filters(names, registry, quick=quick, seq_lens=seq_lens, presets=presets, options=options)
    device = resolve_device(device)
    env = environment(device)
    filters = run_filters(names, registry, seq_lens, presets)
    meta = dict(env, suites=names, quick=quick, filters=filters)
    if options:
        meta["options"] = dict(options)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(env, results_root)
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += run_suites(
            [name],
            quick=quick,
            device=device,
            env=env,
            registry=registry,
            seq_lens=seq_lens,
            presets=presets,
            options=dict(options, out_dir=out_dir),
            log=log,
        )
        # Tables after every suite: a run stopped by a time limit keeps what it measured.
        report.write_run(out_dir, meta, rows, plots=False)
    report.write_run(out_dir, meta, rows, plots=plots)
    if update_readme is None:
        update_readme = out_dir.resolve().is_relative_to(results_root.resolve())
    if update_readme:
        report.update_results_readme(results_root / "README.md", out_dir, meta, rows)
    return RunResult(out_dir, rows, meta)
