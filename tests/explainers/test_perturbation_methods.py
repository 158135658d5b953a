"""RISE and occlusion against plain loop replicas."""


import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import vit_explore as vx
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit

from ..conftest import input_for
from ..replica import replica_forward, tokens_into_blocks


def reference_rise_masks(N, s, p1, size, seed):
    """eclique/RISE generate_masks, with skimage resize(order=1, mode='reflect') written as
    the scipy zoom it calls (grid_mode=True, mode='mirror')."""
    np.random.seed(seed)
    cell = np.ceil(np.array(size) / s)
    up = ((s + 1) * cell).astype(int)
    grid = (np.random.rand(N, s, s) < p1).astype("float32")
    masks = np.empty((N, *size))
    for i in range(N):
        x = np.random.randint(0, cell[0])
        y = np.random.randint(0, cell[1])
        big = ndi.zoom(grid[i].astype(np.float64), (up[0] / s, up[1] / s), order=1, mode="mirror", grid_mode=True)
        masks[i] = big[x : x + size[0], y : y + size[1]]
    return masks


@pytest.mark.parametrize("variant", ["vanilla", "nonsquare"])
def test_rise_matches_loop_replica(variant):
    model = tiny_vit(variant)
    x = input_for(model, batch=2, seed=3)
    H, W = x.shape[-2:]
    N, s, p1 = 40, 4, 0.3
    ex = vx.explain(model, x, "rise", n_masks=N, s=s, p1=p1, seed=5, batch_size=16)
    masks = torch.from_numpy(reference_rise_masks(N, s, p1, (H, W), 5))
    with torch.no_grad():
        c = model(x).argmax(-1)
    for b in range(2):
        sal = torch.zeros(H, W, dtype=torch.float64)
        for i in range(N):
            with torch.no_grad():
                p = model((x[b] * masks[i].float())[None]).softmax(-1)[0, c[b]]
            sal += float(p) * masks[i]
        sal /= N * p1
        assert torch.allclose(ex.extras["pixel_map"][b].double(), sal, atol=1e-5)
        ph, pw = model.patch_embed.patch_size
        pm = torch.nn.functional.avg_pool2d(sal[None, None], (ph, pw))[0, 0]
        assert torch.allclose(ex.patch_map[b].double(), pm, atol=1e-5)


def _windows(n, w, stride):
    st = list(range(0, n - w + 1, stride))
    if st[-1] != n - w:
        st.append(n - w)
    return st


@pytest.mark.parametrize("window,stride,mode,score", [(1, 1, "zero", "prob"), (2, 1, "mean", "logit"), (2, 3, "zero", "prob")])
def test_occlusion_matches_loop_replica(window, stride, mode, score):
    model = tiny_vit("nonsquare")
    x = input_for(model, batch=2, seed=4)
    ex = vx.explain(model, x, "occlusion", window=window, stride=stride, mode=mode, score=score, batch_size=5)
    gh, gw = 4, 6
    with torch.no_grad():
        base = model(x)
    c = base.argmax(-1)
    f = (lambda z: z.softmax(-1)) if score == "prob" else (lambda z: z)
    for b in range(2):
        tot = torch.zeros(gh, gw, dtype=torch.float64)
        cnt = torch.zeros(gh, gw, dtype=torch.float64)
        for r in _windows(gh, window, stride):
            for q in _windows(gw, window, stride):
                xi = x[b].clone()
                sub = 0.0 if mode == "zero" else x[b].mean((1, 2), keepdim=True)
                xi[:, r * 8 : (r + window) * 8, q * 8 : (q + window) * 8] = (
                    sub if mode == "zero" else sub.expand(3, window * 8, window * 8)
                )
                with torch.no_grad():
                    o = model(xi[None])
                d = float(f(base[b : b + 1])[0, c[b]] - f(o)[0, c[b]])
                tot[r : r + window, q : q + window] += d
                cnt[r : r + window, q : q + window] += 1
        assert torch.allclose(ex.patch_map[b].double(), (tot / cnt).nan_to_num(0.0), atol=1e-5)


def test_occlusion_drop_matches_token_replica():
    model = tiny_vit("gap")
    x = input_for(model, batch=1, seed=5)
    ex = vx.explain(model, x, "occlusion", mode="drop")
    tok = tokens_into_blocks(model, x)
    ref_full, _, _ = replica_forward(model, tok)
    c = int(ref_full.argmax())
    pb = ref_full.softmax(-1)[0, c]
    want = torch.zeros(16, dtype=torch.float64)
    for p in range(16):
        kept = [q for q in range(16) if q != p]
        out, _, _ = replica_forward(model, tok[:, kept])  # no prefix tokens in a GAP model
        want[p] = pb - out.softmax(-1)[0, c]
    assert torch.allclose(ex.patch_map[0].double().reshape(-1), want, atol=1e-5)


def test_bad_params():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=1)
    with pytest.raises(InputError, match="did you mean 'zero'"):
        vx.explain(model, x, "occlusion", mode="zeros")
    with pytest.raises(InputError, match="window"):
        vx.explain(model, x, "occlusion", window=5)
    with pytest.raises(InputError, match="p1"):
        vx.explain(model, x, "rise", p1=0.0)
