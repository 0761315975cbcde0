"""One torch thread per module here: the hardening tests run tiny tensors, and torch's
thread pool spinning against the subprocesses these tests start costs more than it
saves on a small CPU. Restored after each module."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
