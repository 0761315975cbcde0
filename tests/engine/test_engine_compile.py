"""torch.compile runs the model and agrees with eager execution."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_compiled_model_matches_eager(make_model, windows):
    model = make_model("vae").eval()
    ids = windows(64)
    z = torch.randn(2, model.config.latent_dim)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, z=z), model(ids, z=z), rtol=1e-4, atol=1e-4)
