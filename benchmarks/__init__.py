"""Stretto's speed and memory benchmarks (not installed; run as `python -m benchmarks`).

Suites live in `<name>_bench.py` modules that expose `run(*, quick, device) -> list[dict]`;
`core` runs them and enriches every row, `report` writes CSV/JSON/Markdown, `plot`
draws the figures, `shapes` is the one shape table and `timing` the shared timers.
"""
