"""What checks Stretto on a GPU, and its kernels for GPUs without one (not installed).

`run.sh` is the GPU run: one command on a CUDA machine, stages written to `$OUT` the
moment they measure something (`first_light.py`), rehearsed on a CPU by
`make gpu-rehearsal` with `image/` making the venv look like the GPU image.
`compile_table.py` compiles every Triton kernel for sm_90 and sm_80 without a GPU and
reads registers, spills and shared memory from the binaries. Results land in
`benchmarks/results/` beside every other measurement. docs/development.md, "The GPU run".
"""
