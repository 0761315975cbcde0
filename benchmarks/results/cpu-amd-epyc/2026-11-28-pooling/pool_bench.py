"""Summary pooling alone, forward + backward, before and after, side by side, medians.

before: c569780's pool_summaries (padded fp32 copies + einsum, autograd backward),
imported from /tmp/oldsrc/old_chunked.py (`git show c569780:kernels/wha/chunked.py`);
after: chunked.pool_summaries (a view of k / index_add_) and chunked.unpool_add_.
B1 H8 N2048 D64, block 64. Argument: repeats (default 15).
"""

import statistics
import sys
import time

import torch

from stretto.kernels.wha import chunked

sys.path.insert(0, "/tmp/oldsrc")
import old_chunked  # noqa: E402

B, H, N, D, G = 1, 8, 2048, 64, 64
torch.manual_seed(0)
k, v = (torch.randn(B, H, N, D) for _ in range(2))
mask = torch.rand(B, N) > 0.1


def before(m):
    torch.zeros_like(k), torch.zeros_like(v)  # the stand-ins for dk, dv "after" allocates
    kk, vv = (x.detach().requires_grad_() for x in (k, v))
    ks, vs, _ = old_chunked.pool_summaries(kk, vv, G, m)
    torch.autograd.backward((ks, vs), (torch.ones_like(ks), torch.ones_like(vs)))


def after(m):
    ks, inv = chunked.pool_summaries(k, G, m)
    vs, _ = chunked.pool_summaries(v, G, m)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)  # stand for the attention's dk, dv
    chunked.unpool_add_(dk, torch.ones_like(ks), G, m, inv)
    chunked.unpool_add_(dv, torch.ones_like(vs), G, m, inv)


cases = {
    "before-nomask": lambda: before(None),
    "after-nomask": lambda: after(None),
    "before-mask": lambda: before(mask),
    "after-mask": lambda: after(mask),
}
for f in cases.values():
    f()
times = {n: [] for n in cases}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 15):
    for n, f in cases.items():
        s = time.perf_counter()
        f()
        times[n].append((time.perf_counter() - s) * 1e3)
for n, t in times.items():
    t = sorted(t)
    p20, p80 = t[len(t) // 5], t[4 * len(t) // 5]
    print(f"{n:14s} median {statistics.median(t):6.2f} ms  p20-p80 {p20:.2f}-{p80:.2f}")
print("threads", torch.get_num_threads())
