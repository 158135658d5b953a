"""The forward engine's caches belong to the engine: a held engine reuses the unmodified
forward of the same image (one forward row per brush) and sees every change; a call
without one keeps nothing."""

import threading

import pytest
import torch

import vit_explore.interventions as vi
from vit_explore.errors import InputError
from vit_explore.perturb import ForwardEngine, gaussian_blur_reflect, parse_patches
from vit_explore.testing import tiny_vit

from ..conftest import input_for


def fwd(model, x):
    with torch.no_grad():
        return model(x)


class Rows:
    """Counts the images that go through the model (a pre-hook on the patch embedding)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.patch_embed.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.n += args[0].shape[0]


def _brush(model, x):
    ph, pw = model.patch_embed.patch_size
    g = torch.zeros(x.shape[-2] // ph, x.shape[-1] // pw, dtype=torch.bool)
    g[1:3, 0:2] = True
    return g


@pytest.mark.parametrize("mode", ["blur", "noise", "zero"])
def test_a_held_engine_skips_the_unmodified_forward(mode):
    model = tiny_vit("vanilla").eval()
    rows = Rows(model)  # registered first: the fingerprint stays the same below
    x = input_for(model, batch=1, seed=1)
    g = _brush(model, x)
    eng = ForwardEngine()
    a = vi.intervene(model, x, g, mode=mode, engine=eng)
    assert rows.n == 2  # the brushed image and the unmodified one, fused
    b = vi.intervene(model, x, g, mode=mode, engine=eng)
    assert rows.n == 3  # the brushed image only
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-6)  # batch of 2, then of 1
    assert torch.equal(a.base_logits, b.base_logits)  # the kept forward itself
    torch.testing.assert_close(b.base_logits, fwd(model, x), rtol=1e-5, atol=1e-6)
    n = rows.n
    vi.intervene(model, x, g, mode=mode)  # no engine: nothing is kept, both rows again
    vi.intervene(model, x, g, mode=mode)
    assert rows.n == n + 4
    rows.handle.remove()


def test_engines_are_independent():
    model = tiny_vit("vanilla").eval()
    rows = Rows(model)
    xa, xb = input_for(model, batch=1, seed=2), input_for(model, batch=1, seed=3)
    g = _brush(model, xa)
    ea, eb = ForwardEngine(), ForwardEngine()
    vi.intervene(model, xa, g, mode="zero", engine=ea)
    vi.intervene(model, xb, g, mode="zero", engine=eb)
    n = rows.n
    ra = vi.intervene(model, xa, g, mode="zero", engine=ea)  # b's call did not evict a's entry
    rb = vi.intervene(model, xb, g, mode="zero", engine=eb)
    assert rows.n == n + 2
    torch.testing.assert_close(ra.base_logits, fwd(model, xa), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rb.base_logits, fwd(model, xb), rtol=1e-5, atol=1e-6)
    rows.handle.remove()


def test_a_held_engine_sees_weight_data_and_input_edits():
    model = tiny_vit("vanilla").eval()
    x = input_for(model, batch=1, seed=4)
    eng = ForwardEngine()
    vi.intervene(model, x, [0], mode="drop", engine=eng)
    with torch.no_grad():
        model.head.bias[0] += 5.0
    r = vi.intervene(model, x, [0], mode="drop", engine=eng)
    torch.testing.assert_close(r.base_logits, fwd(model, x), rtol=1e-5, atol=1e-6)
    model.head.bias.data = model.head.bias.data + 2.0  # new storage, same version counter
    r = vi.intervene(model, x, [3], mode="blur", engine=eng)
    torch.testing.assert_close(r.base_logits, fwd(model, x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        x[0, :, :8, :8] += 3.0  # the same tensor, new content
    r = vi.intervene(model, x, [3], mode="blur", engine=eng)
    torch.testing.assert_close(r.base_logits, fwd(model, x), rtol=1e-5, atol=1e-6)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        vi.intervene(model, x, [0], mode="drop", engine=eng)


def test_a_shared_engine_across_threads_gives_each_image_its_numbers():
    model = tiny_vit("vanilla").eval()
    xa, xb = input_for(model, batch=1, seed=21), input_for(model, batch=1, seed=22)
    g = _brush(model, xa)
    ph, pw = model.patch_embed.patch_size
    R = g.float().repeat_interleave(ph, 0).repeat_interleave(pw, 1)[None, None]
    want = {k: fwd(model, x * (1 - R) + gaussian_blur_reflect(x, 11, 5.0) * R).softmax(-1)
            for k, x in (("a", xa), ("b", xb))}
    eng, bad = ForwardEngine(), []

    def brush(k, x):
        for _ in range(10):
            if not torch.allclose(vi.intervene(model, x, g, mode="blur", engine=eng).probs, want[k], rtol=1e-5, atol=1e-6):
                bad.append(k)

    ts = [threading.Thread(target=brush, args=kx) for kx in (("a", xa), ("b", xb))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert bad == []


def test_causal_score_through_an_engine_equals_a_fresh_one():
    model = tiny_vit("vanilla", seed=1).eval()
    x = input_for(model, batch=1, seed=5)
    eng = ForwardEngine()
    r = vi.intervene(model, x, [0, 1, 5], mode="noise", engine=eng)
    torch.testing.assert_close(r.causal_score, vi.causal_score(model, x, [0, 1, 5]), rtol=1e-5, atol=1e-6)


def test_parse_patches_forms():
    grid, hw, ps = (2, 3), (16, 24), (8, 8)
    r, i = parse_patches([0, 4], 2, grid, hw, ps)
    assert r.shape == (2, 2, 3) and i.tolist() == [0, 1]
    assert r[0].reshape(-1).tolist() == [True, False, False, False, True, False]
    px = torch.zeros(16, 24, dtype=torch.bool)
    px[9, 17] = True  # one pixel of patch (1, 2)
    r, i = parse_patches(px, 1, grid, hw, ps)
    assert r[0].reshape(-1).nonzero().reshape(-1).tolist() == [5]
    r, i = parse_patches([[0], [1, 2]], 1, grid, hw, ps)
    assert i.tolist() == [0, 0] and r.reshape(2, -1).sum(1).tolist() == [1, 2]
    with pytest.raises(InputError, match="out of range"):
        parse_patches([6], 1, grid, hw, ps)


class Passes:
    """Records the batch size of every pass through the model (a pre-hook on the patch embedding)."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self.handle = model.patch_embed.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.sizes.append(args[0].shape[0])


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 5, 64, None])
def test_streamed_passes_equal_the_materialised_stack(with_base, batch_size):
    """keep_fed=False blends each pass's rows just before it: the same passes as forwarding the
    whole blended stack (the unmodified images first when fused), so the same logits bit for bit,
    and no pass of inputs larger than batch_size."""
    model = tiny_vit("vanilla").eval()
    x = input_for(model, batch=2, seed=3)
    gen = torch.Generator().manual_seed(0)
    eng = ForwardEngine()
    s = eng.setup(model, x)
    regions = torch.rand(7, *s.grid, generator=gen) < 0.3
    img_idx = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    out = {}
    for keep in (True, False):
        passes = Passes(model)
        logits, base, fed, _ = ForwardEngine().run_regions(
            model, s, regions, img_idx, "blur", batch_size=batch_size, with_base=with_base, keep_fed=keep
        )
        passes.handle.remove()
        out[keep] = (logits, base, passes.sizes)
        assert (fed is not None) == keep
    assert torch.equal(out[True][0], out[False][0])
    if with_base:
        assert torch.equal(out[True][1], out[False][1])
    assert out[True][2] == out[False][2]  # the same passes
    n = 7 + (2 if with_base else 0)
    step = batch_size or n  # None: one pass
    assert out[False][2] == [min(step, n - i) for i in range(0, n, step)]
    # the streamed rows are the blended inputs: each equals the image with its region's patches replaced
    S = eng.substrate(x, s.token, "blur", seed=0, sigma=0.1, blur_size=11, blur_sigma=5.0)  # run_regions defaults
    fed_all = eng.blend(s, regions, img_idx, S)
    torch.testing.assert_close(out[False][0], fwd(model, fed_all), rtol=1e-5, atol=1e-6)


def test_drop_mode_without_fed_returns_the_same_logits():
    model = tiny_vit("vanilla").eval()
    x = input_for(model, batch=2, seed=5)
    eng = ForwardEngine()
    s = eng.setup(model, x)
    regions = torch.rand(5, *s.grid, generator=torch.Generator().manual_seed(1)) < 0.4
    img_idx = torch.tensor([0, 1, 0, 1, 1])
    a = ForwardEngine().run_regions(model, s, regions, img_idx, "drop", batch_size=2, with_base=False)
    b = ForwardEngine().run_regions(model, s, regions, img_idx, "drop", batch_size=2, with_base=False, keep_fed=False)
    assert torch.equal(a[0], b[0]) and b[2] is None and torch.equal(a[2], x[img_idx])
    assert all(torch.equal(u, v) for u, v in zip(a[3], b[3]))
