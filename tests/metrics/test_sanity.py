"""Model-parameter randomisation: similarity functions against replicas; the model is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from vit_explore.metrics import functional as MF
from vit_explore.testing import tiny_vit


def test_spearman_and_cosine_against_replicas():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 4, 4, generator=g), torch.rand(3, 4, 4, generator=g)
    a[0, 0, :2] = 0.5  # a tie
    s = MF.spearman(a, b)
    for i in range(3):
        assert s[i].item() == pytest.approx(spearmanr(a[i].reshape(-1), b[i].reshape(-1)).statistic, abs=1e-12)
        av, bv = a[i].double().reshape(-1).numpy(), b[i].double().reshape(-1).numpy()
        assert MF.cosine(a, b)[i].item() == pytest.approx(av @ bv / np.linalg.norm(av) / np.linalg.norm(bv))


def test_ssim_against_a_loop_replica():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 9, 9, generator=g), torch.rand(1, 9, 9, generator=g)
    A = (a[0] - a.min()) / (a.max() - a.min())
    B = (b[0] - b.min()) / (b.max() - b.min())
    A, B = A.double().numpy(), B.double().numpy()
    vals = []
    for i in range(3):
        for j in range(3):
            x, y = A[i : i + 7, j : j + 7].reshape(-1), B[i : i + 7, j : j + 7].reshape(-1)
            vx, vy = x.var(ddof=1), y.var(ddof=1)
            cxy = ((x - x.mean()) * (y - y.mean())).sum() / (x.size - 1)
            c1, c2 = 0.01**2, 0.03**2
            vals.append((2 * x.mean() * y.mean() + c1) * (2 * cxy + c2)
                        / ((x.mean() ** 2 + y.mean() ** 2 + c1) * (vx + vy + c2)))
    assert MF.ssim(a, b).item() == pytest.approx(np.mean(vals), abs=1e-10)
    assert MF.ssim(a, a).item() == pytest.approx(1.0)


def test_cascading_randomisation_leaves_the_model_and_rng_alone():
    model = tiny_vit("vanilla", depth=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    res = MF.model_randomisation(model, x, "raw_attention", seed=42)
    assert torch.equal(rng, torch.get_rng_state())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert res.stages == ["original", "head", "norm", "blocks.1", "blocks.0", "patch_embed"]
    np.testing.assert_allclose(res.scores["spearman_abs"][0], 1.0)
    assert res.maps.shape == (6, 2, 4, 4)
    # raw attention does not depend on the head or the final norm: the first stages keep the map
    np.testing.assert_allclose(res.scores["cosine"][1], 1.0, atol=1e-6)
    # re-running with the same seed is deterministic
    res2 = MF.model_randomisation(model, x, "raw_attention", seed=42)
    np.testing.assert_array_equal(res.scores["spearman"], res2.scores["spearman"])


def test_randomisation_with_a_callable_and_bad_stage():
    model = tiny_vit("vanilla", depth=1)
    x = torch.randn(1, 3, 32, 32)
    res = MF.model_randomisation(model, x, lambda m, xx, t: m(xx)[:, None, :4].expand(-1, 4, 4).detach(),
                                 stages=["head"], similarities=("cosine",))
    assert res.stages == ["original", "head"]
    from vit_explore.errors import InputError

    with pytest.raises(InputError, match="no sub-module"):
        MF.model_randomisation(model, x, "raw_attention", stages=["nope"])
