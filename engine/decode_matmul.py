"""The matrix products of the compiled decoding step on the CPU.

A decoding step multiplies a few rows (one per sequence of the batch) by every weight
matrix of the model, so its time is the time to read the weights. Inductor hands each
such product to `aten.mm`, which on the CPU calls the BLAS torch was built with; with
MKL on an AMD EPYC that reads the weights at a fraction of the machine's speed (the
generate suite's `matmul-floor` rows of run 2026-12-07-3b5705d, `F.linear` eager, took
1.8x the copy floor's time at the small preset and 2.5x at the base). `DECODE_MATMULS`,
the Inductor graph pass `DecodeStep` compiles its CPU step with, rewrites every `mm` and
`addmm` of the step:

- at most `BROADCAST_MAX_ROWS` rows: as the rows broadcast against the weight and summed
  over the inner dimension, which Inductor turns into one vectorized loop that streams
  each weight row once, a matrix-vector product at the speed the weights can be read;
- more rows, in float32 or bfloat16, where torch has oneDNN: as oneDNN's linear
  (`onednn_linear`), which blocks the product for the cache whatever the CPU's vendor;
- anything else is left to `aten.mm`.

`BROADCAST_MAX_ROWS` comes from the generate suite's `compiled-aten-mm`,
`compiled-broadcast` and `compiled-onednn` providers, the compiled small preset with
every product in one form, side by side at batch 1, 2, 4, 8 and 32 (docs/engine.md,
"Compiled generation: measured"): the broadcast form is the fastest at 1 and 2 rows,
oneDNN from 4. The suite's `matmul-floor` rows time the products in
the forms the step uses.
"""

from __future__ import annotations

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

aten = torch.ops.aten

BROADCAST_MAX_ROWS = 2  # rows up to which a product is a broadcast sum, not a GEMM


@torch.library.custom_op("stretto::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x @ weight.T` by oneDNN: x `[M, K]`, weight `[N, K]` -> `[M, N]`, float32 or
    bfloat16 on the CPU (where `onednn_available()`)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), None, "none", [], "")


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


def onednn_available() -> bool:
    """Whether this torch was built with oneDNN and can run `onednn_linear`."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class DecodeMatmuls(CustomGraphPass):
    """Inductor post-grad pass: each CPU `mm(a, b)` / `addmm(bias, a, b)` of a graph as
    the module docstring says (broadcast sum up to `broadcast_max_rows` rows of `a`,
    else `onednn_linear` when `onednn` and the dtype allows). `rewritten` counts what
    it did, by form, since the pass was made."""

    def __init__(self, broadcast_max_rows: int = BROADCAST_MAX_ROWS, onednn: bool = True):
        self.broadcast_max_rows = broadcast_max_rows
        self.onednn = onednn
        self.rewritten = {"broadcast": 0, "onednn": 0}

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            if node.op != "call_function" or node.kwargs:
                continue  # alpha and beta of addmm come as keywords
            if node.target is aten.mm.default and len(node.args) == 2:
                bias, (a, b) = None, node.args
            elif node.target is aten.addmm.default and len(node.args) == 3:
                bias, a, b = node.args
            else:
                continue
            form = self._form(a.meta.get("val"), b.meta.get("val"))
            if form is None:
                continue
            with graph.inserting_before(node):
                weight = _call(graph, aten.permute.default, b, [1, 0])  # [N, K]
                if form == "broadcast":
                    rows = _call(graph, aten.unsqueeze.default, a, 1)  # [M, 1, K]
                    cols = _call(graph, aten.unsqueeze.default, weight, 0)  # [1, N, K]
                    product = _call(graph, aten.mul.Tensor, rows, cols)  # [M, N, K]
                    out = _call(graph, aten.sum.dim_IntList, product, [-1])  # [M, N]
                else:
                    out = _call(graph, torch.ops.stretto.onednn_linear.default, a, weight)
                if bias is not None:
                    out = _call(graph, aten.add.Tensor, out, bias)
            node.replace_all_uses_with(out)
            graph.erase_node(node)
            self.rewritten[form] += 1

    def _form(self, a: torch.Tensor | None, b: torch.Tensor | None) -> str | None:
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            return None
        if a.device.type != "cpu" or b.device.type != "cpu" or a.dtype != b.dtype:
            return None
        if not a.dtype.is_floating_point:
            return None
        if a.shape[0] <= self.broadcast_max_rows:
            return "broadcast"
        if not self.onednn or not onednn_available():
            return None
        if a.dtype == torch.float32:
            return "onednn"
        if a.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "onednn"
        return None

    def uuid(self) -> bytes:
        """What Inductor's cache keys a graph compiled with this pass by: this file and
        the pass's settings."""
        return get_hash_for_files((__file__,), f"{self.broadcast_max_rows}-{self.onednn}")


def _call(graph: torch.fx.Graph, op, *args) -> torch.fx.Node:
    """A node of `graph` calling `op(*args)`, with the value Inductor's later passes read
    (computed on the fake tensors of its inputs)."""
    node = graph.call_function(op, args)
    node.meta["val"] = op(*(a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args))
    return node


# The one instance compiled steps use: Inductor's options compare passes by identity, so
# every step built with this one shares its compiled code.
DECODE_MATMULS = DecodeMatmuls()
