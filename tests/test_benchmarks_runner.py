"""The benchmark runner's plumbing on a fake suite: rows, files, plots, README sections.

No timing is asserted here (speed lives in benchmarks/); these tests check that what a
suite returns reaches results.csv/json/md and the plots intact and enriched.
"""

from __future__ import annotations

import csv
import json

import pytest

from benchmarks import core, report
from benchmarks.plot import plot_rows
from benchmarks.timing import bench_cpu, peak_rss_in_child, quantile

ENV = {
    "device": "Fake CPU (2 cores)",
    "device_slug": "cpu-fake",
    "torch": "2.13.0",
    "triton": None,
    "stretto": "0.1.0",
    "commit": "0123456789abcdef",
    "date": "2026-11-24T00:00:00Z",
}


def fake_suite(*, quick, device):
    rows = []
    for provider, scale in (("fast", 1.0), ("slow", 3.0)):
        for n in (512, 1024, 2048):
            rows.append(
                {
                    "suite": "fake",
                    "provider": provider,
                    "mode": "fwd",
                    "shape": f"B1-H8-N{n}-D64",
                    "dtype": "torch.float32",
                    "median_ms": scale * n / 512,
                    "p20_ms": scale * n / 600,
                    "p80_ms": scale * n / 450,
                    "peak_mem_mb": scale * n / 100,
                    "tokens_per_s": n / (scale * n / 512) * 1e3,
                    "note": "kept in extra",
                }
            )
    rows.append(core.skipped_row("fake", "flash-attn is not installed", provider="flash"))
    return rows


def suite_without_device(*, quick):
    return [{"provider": "p", "mode": "fwd", "shape": {"B": 2, "N": 77}, "median_ms": 1.5}]


def failing_suite(*, quick, device):
    raise RuntimeError("kernel\nexploded")


def suite_missing_dependency(*, quick, device):
    raise ModuleNotFoundError("No module named 'miditok'", name="miditok")


REGISTRY = {
    "fake": fake_suite,
    "nodevice": suite_without_device,
    "failing": failing_suite,
    "nodep": suite_missing_dependency,
    "absent": "benchmarks.no_such_bench",
}


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setattr(core, "environment", lambda device: dict(ENV))
    monkeypatch.setattr(core, "resolve_device", lambda device: "cpu")


@pytest.fixture(scope="module")
def results_root(tmp_path_factory):
    return tmp_path_factory.mktemp("bench") / "results"


@pytest.fixture(scope="module")
def run(results_root):
    """One run of every fake suite, shared by the tests that read its files."""
    results_root.mkdir()
    (results_root / "README.md").write_text(report.README_HEAD + "\n" + report.NO_RUNS_YET + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "environment", lambda device: dict(ENV))
        mp.setattr(core, "resolve_device", lambda device: "cpu")
        return core.run_benchmarks(
            list(REGISTRY),
            quick=True,
            device="cpu",
            registry=REGISTRY,
            results_root=results_root,
            log=lambda msg: None,
        )


def test_rows_are_enriched_and_normalized(run):
    fake = [r for r in run.rows if r["suite"] == "fake" and r["status"] == "ok"]
    assert len(fake) == 6
    for row in run.rows:
        assert tuple(row) == core.ROW_FIELDS
        for field in core.ENV_FIELDS:
            assert row[field] == ENV[field]
    first = fake[0]
    assert (first["seq_len"], first["dtype"], first["extra"]) == (
        512,
        "float32",
        {"note": "kept in extra"},
    )
    other = next(r for r in run.rows if r["suite"] == "nodevice")
    assert (other["shape"], other["seq_len"], other["median_ms"]) == ("B2-N77", 77, 1.5)


@pytest.mark.parametrize(
    "suite, status",
    [
        pytest.param("fake", "skipped: flash-attn is not installed", id="peer-absent"),
        pytest.param("nodep", "skipped: ModuleNotFoundError: No module named", id="dependency"),
        pytest.param("absent", "skipped: benchmarks/no_such_bench.py is not there", id="module"),
        pytest.param("failing", "error: RuntimeError: kernel exploded", id="error"),
    ],
)
def test_unmeasured_cases_are_rows(run, suite, status):
    rows = [r for r in run.rows if r["suite"] == suite and r["status"] != "ok"]
    assert len(rows) == 1
    assert rows[0]["status"].startswith(status)
    assert all(rows[0][f] is None for f in core.MEASURED_FIELDS)


def test_run_folder_layout(run, results_root):
    assert run.out_dir == results_root / "cpu-fake" / "2026-11-24-0123456"
    assert [r["suite"] for r in run.errors] == ["failing"]
    with (run.out_dir / "results.csv").open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(run.rows)
    assert lines[0]["commit"] == ENV["commit"]
    assert json.loads(lines[0]["extra"]) == {"note": "kept in extra"}
    data = json.loads((run.out_dir / "results.json").read_text())
    assert data["meta"]["suites"] == list(REGISTRY)
    assert data["rows"] == json.loads(json.dumps(run.rows))
    md = (run.out_dir / "results.md").read_text()
    assert "| fake | slow | fwd | `B1-H8-N2048-D64` | float32 | 12.0 |" in md
    assert "3.00x" in md and "skipped: flash-attn is not installed" in md
    plots = sorted(p.name for p in run.out_dir.glob("*.png"))
    assert plots == ["fake-fwd-memory.png", "fake-fwd-time.png"]
    for name in plots:
        assert (run.out_dir / name).read_bytes()[:4] == b"\x89PNG"
        assert f"({name})" in md


def test_a_second_run_of_the_same_day_and_commit_keeps_the_first(run, results_root):
    """The folder of a run that exists already is never reused: the next run of the same
    day and commit goes to `-2`, the one after to `-3`, and the first run's files stay."""
    first = (run.out_dir / "results.json").read_text()
    env = dict(ENV)
    second = core.default_out_dir(env, results_root)
    assert second == run.out_dir.with_name(run.out_dir.name + "-2")
    second.mkdir()
    assert core.default_out_dir(env, results_root) == run.out_dir.with_name(run.out_dir.name + "-3")
    second.rmdir()
    assert (run.out_dir / "results.json").read_text() == first


def test_results_readme_keeps_other_devices(run, results_root, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text((results_root / "README.md").read_text())
    text = readme.read_text()
    assert report.NO_RUNS_YET not in text
    assert "<!-- device: cpu-fake -->" in text and "cpu-fake/2026-11-24-0123456/" in text
    gpu_meta = dict(ENV, device="Fake GPU", device_slug="fake-gpu")
    gpu_rows = [dict(r, device="Fake GPU") for r in run.rows[:1]]
    report.update_results_readme(readme, run.out_dir, gpu_meta, gpu_rows)
    newer = [dict(r, median_ms=99.0) for r in run.rows[:1]]
    report.update_results_readme(readme, run.out_dir, dict(ENV, date="2026-12-01"), newer)
    text = readme.read_text()
    assert text.count("<!-- device: cpu-fake -->") == 1
    assert "<!-- device: fake-gpu -->" in text and "Fake GPU" in text
    assert "| 99.0 |" in text and "2026-12-01" in text


def test_plot_skips_unmeasured_lengthless_and_single_length_rows(tmp_path):
    rows = [
        core.normalize_row(r, "t", ENV)
        for r in [
            {"provider": "a", "mode": "encode", "shape": "file.mid", "median_ms": 1.0},
            {"provider": "b", "mode": "fwd", "shape": "N512", "status": "skipped: absent"},
            {"provider": "c", "mode": "fwd", "shape": "N512", "median_ms": 2.0},
            # one provider's rows of several models, all at one length: still no curve
            {"provider": "d", "mode": "fwd", "shape": "N512", "median_ms": 2.0},
            {"provider": "d", "mode": "fwd", "shape": "N512", "median_ms": 3.0},
        ]
    ]
    assert plot_rows(rows, tmp_path) == []


def test_unknown_suite_is_refused(tmp_path, fake_env):
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        core.run_benchmarks(["nope"], registry=REGISTRY, results_root=tmp_path)


def test_device_slug():
    name = "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (2 cores)"
    assert core.device_slug("cpu", name) == "cpu-intel-xeon-platinum-8481c"
    assert core.device_slug("cuda", "NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_quantile_and_side_by_side_timer():
    assert quantile([4.0, 1.0, 3.0, 2.0, 5.0], 0.5) == 3.0
    assert quantile([1.0, 2.0], 0.2) == pytest.approx(1.2)
    calls = []
    timings = bench_cpu(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {name: t.samples for name, t in timings.items()} == {"a": 3, "b": 3}


def allocate_mb(size_mb):
    import numpy as np

    def run():
        np.ones(size_mb * 2**20, dtype=np.uint8).sum()

    return run


def test_peak_rss_of_a_child_process():
    small = peak_rss_in_child(allocate_mb, {"size_mb": 1}, timeout_s=60)
    big = peak_rss_in_child(allocate_mb, {"size_mb": 160}, timeout_s=60)
    assert small["peak_mem_mb"] < 40, small
    assert 150 < big["peak_mem_mb"] < 260, big


def test_stretto_bench_runs_the_runner_from_the_checkout(tmp_path, monkeypatch, capfd):
    from stretto.engine import cli
    from stretto.engine.cli import bench as bench_command

    cmd = bench_command.benchmarks_command(["memory", "--quick", "--device", "cpu"])
    assert cmd[1:] == ["-m", "benchmarks", "memory", "--quick", "--device", "cpu"]
    assert (bench_command.repo_root() / "benchmarks" / "__main__.py").is_file()
    # the runner itself names an unknown suite (a usage error: exit 2)
    assert cli.main(["bench", "nope"]) == 2
    assert "unknown suite 'nope'" in capfd.readouterr().err
    monkeypatch.setattr(bench_command, "repo_root", lambda: tmp_path)  # as in a wheel install
    assert cli.main(["bench", "--quick"]) == 1
    assert "no benchmarks/ folder" in capfd.readouterr().err


def test_stretto_bench_help_is_the_runners(capfd):
    """Every argument reaches the runner, --help included: its suite list is the one
    `stretto bench` offers (there is no second list to keep in sync)."""
    from benchmarks.schema import SUITES
    from stretto.engine import cli

    assert cli.main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("usage: python -m benchmarks")
    assert ", ".join(SUITES) in " ".join(out.split())


# -- filters: --seq-len and --preset -----------------------------------------------


def suite_with_filters(*, quick, device, seq_lens=None, presets=None):
    return [
        {"provider": p, "mode": "fwd", "shape": f"{p}-N{n}", "seq_len": n, "median_ms": 1.0}
        for p in (presets or ["tiny"])
        for n in (seq_lens or [512])
    ]


def table_suite(*, quick, device):
    """Like the attention suite: sweeps the shape table and takes no `seq_lens`."""
    rows = [
        {"provider": "p", "mode": "fwd", "shape": f"N{n}", "median_ms": 1.0} for n in (512, 1024)
    ]
    return rows + [core.skipped_row("attention", "peer absent", provider="q")]


FILTER_REGISTRY = {"filtered": suite_with_filters, "attention": table_suite}


@pytest.mark.parametrize(
    "argv, seq_len, preset",
    [
        pytest.param([], None, None, id="none"),
        pytest.param(["--seq-len", "2048"], [2048], None, id="one-length"),
        pytest.param(
            ["--seq-len", "512", "--seq-len", "77", "--preset", "base", "--preset", "small"],
            [512, 77],
            ["base", "small"],
            id="repeated",
        ),
    ],
)
def test_filters_are_parsed_by_both_entry_points(argv, seq_len, preset):
    from benchmarks.__main__ import build_parser
    from stretto.engine.cli import bench as bench_command

    args = build_parser().parse_args(["model", *argv])
    assert (args.seq_len, args.preset) == (seq_len, preset)
    command = bench_command.benchmarks_command(["model", *argv])
    assert command[1:] == ["-m", "benchmarks", "model", *argv]


@pytest.mark.parametrize("value", ["0", "-5", "2k", "1.5"])
def test_a_length_that_is_not_positive_is_refused(value, capsys):
    from benchmarks.__main__ import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--seq-len", value])
    assert exc.value.code == 2
    assert "--seq-len" in capsys.readouterr().err


@pytest.mark.parametrize(
    "names, kwargs, message",
    [
        pytest.param(
            ["filtered"],
            {"presets": ["huge"]},
            "unknown preset 'huge'; choose from base, small, tiny",
            id="preset",
        ),
        pytest.param(
            ["attention"],
            {"seq_lens": [300]},
            "--seq-len 300 is not in the attention suite's quick sweep; "
            "choose from 512, 1024, 2048",
            id="outside-table-sweep",
        ),
        pytest.param(["filtered"], {"seq_lens": [0]}, "positive integer, got 0", id="zero"),
    ],
)
def test_filters_that_cannot_be_honoured_are_refused_before_running(
    tmp_path, fake_env, names, kwargs, message
):
    with pytest.raises(ValueError, match=message):
        core.run_benchmarks(
            names, quick=True, registry=FILTER_REGISTRY, results_root=tmp_path, **kwargs
        )
    assert not any(tmp_path.iterdir())


def test_main_reports_an_unknown_preset_as_a_usage_error(capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["model", "--preset", "huge", "--no-readme"])
    assert exc.value.code == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_filters_reach_the_suites_and_the_run_metadata(tmp_path, fake_env):
    result = core.run_benchmarks(
        ["filtered", "attention"],
        quick=True,
        registry=FILTER_REGISTRY,
        results_root=tmp_path,
        seq_lens=[2048, 1024],
        presets=["small"],
        plots=False,
        log=lambda msg: None,
    )
    got = {(r["suite"], r["provider"], r["seq_len"]) for r in result.rows}
    assert got == {
        ("filtered", "small", 1024),
        ("filtered", "small", 2048),
        ("attention", "p", 1024),  # 512 dropped by the runner
        ("attention", "q", None),  # a row without a length stays
    }
    assert result.meta["filters"] == {"seq_len": [1024, 2048], "preset": ["small"]}
    md = (result.out_dir / "results.md").read_text()
    assert "quick run, filtered: seq_len 1024, 2048; preset small" in md
    meta, _ = report.read_json(result.out_dir / "results.json")
    assert meta["filters"]["seq_len"] == [1024, 2048]


@pytest.mark.parametrize(
    "filters, line",
    [
        pytest.param({}, "· full run", id="none"),
        pytest.param({"suites": ["model"]}, "· full run, filtered: suites model", id="suites"),
        pytest.param(
            {"suites": ["model"], "seq_len": [2048], "preset": ["base"]},
            "· full run, filtered: suites model; seq_len 2048; preset base",
            id="all",
        ),
    ],
)
def test_environment_line_names_the_filters(filters, line):
    text = report.environment_line(dict(ENV, quick=False, filters=filters))
    assert text.endswith(line)


def test_timed_child_warms_up_on_another_case():
    probe = peak_rss_in_child(
        allocate_mb, {"size_mb": 160}, warmup_kwargs={"size_mb": 1}, timed=True, timeout_s=60
    )
    assert 150 < probe["peak_mem_mb"] < 260, probe
    assert probe["elapsed_ms"] > 0
    assert "elapsed_ms" not in peak_rss_in_child(allocate_mb, {"size_mb": 1}, timeout_s=60)


def test_naming_every_suite_in_another_order_is_not_a_filter():
    every = list(reversed(core.SUITES))
    assert core.run_filters(every, core.SUITES, None, None) == {}
    assert core.run_filters(every[:1], core.SUITES, None, None) == {"suites": every[:1]}


def test_a_profiled_generation_gets_its_table():
    from benchmarks.report import profile_markdown

    events = [
        {
            "event": "cpp_fused_" + "x" * 100,
            "us_per_step": 300.0,
            "share": 0.6,
            "calls_per_step": 1,
        },
        {"event": "a|b", "us_per_step": 150.0, "share": 0.3, "calls_per_step": 2.5},
        {"event": "the other 7 events", "us_per_step": 50.0, "share": 0.1, "calls_per_step": 9},
    ]
    profile = {"clock": "cpu", "events": events, "self_us_per_step": 500.0, "wall_us_per_step": 640}
    row = {"provider": "compiled-profile", "shape": "small-B1-T2048", "extra": {"profile": profile}}
    md = profile_markdown([row, {"provider": "compiled", "shape": "small-B1-T2048", "extra": {}}])
    assert md.startswith("## Generation: where a token step's time goes")
    assert "`small-B1-T2048`: wall 640 µs per step, events 500 µs (cpu self time)." in md
    lines = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(lines) == 3 and len(lines[0].split("`")[1]) == 80
    assert lines[1] == "| `a/b` | 150.0 | 30.0% | 2.50 |"
    assert profile_markdown([row | {"extra": {}}]) == ""
