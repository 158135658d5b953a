"""intervene / causal_score / counterfactual against plain forwards and hand-built inputs."""

import numpy as np
import pytest
import torch

import vit_explore.counterfactual_search as cfs
import vit_explore.interventions as vi
import vit_explore.perturb.substrates as sub
from vit_explore.errors import InputError
from vit_explore.testing import tiny_vit

from .conftest import input_for, model_state
from .replica import replica_forward, tokens_into_blocks


def grid_of(model, x):
    ph, pw = model.patch_embed.patch_size
    return x.shape[-2] // ph, x.shape[-1] // pw


def fwd(model, x):
    with torch.no_grad():
        return model(x)


def pixel_region(model, regions, hw):
    ph, pw = model.patch_embed.patch_size
    r = regions.float().repeat_interleave(ph, 1).repeat_interleave(pw, 2)[:, : hw[0], : hw[1]]
    return r[:, None]




def test_drop_nothing_is_plain_forward(model, x):
    g = torch.zeros(*grid_of(model, x), dtype=torch.bool)
    r = vi.intervene(model, x, g, mode="drop")
    assert torch.allclose(r.logits, fwd(model, x), atol=1e-5)
    assert torch.allclose(r.base_logits, fwd(model, x), atol=1e-5)
    assert torch.allclose(r.delta, torch.zeros(len(x)), atol=1e-6)


def test_zero_everything_is_blank_image(model, x):
    g = torch.ones(*grid_of(model, x), dtype=torch.bool)
    r = vi.intervene(model, x, g, mode="zero")
    assert torch.allclose(r.logits, fwd(model, torch.zeros_like(x)), atol=1e-5)
    m = vi.intervene(model, x, g, mode="mean")
    assert torch.allclose(m.logits, fwd(model, x.mean((2, 3), keepdim=True).expand_as(x)), atol=1e-5)
    k = vi.intervene(model, x, ~g, mode="zero", keep=True)  # keep nothing
    assert torch.allclose(k.logits, r.logits, atol=1e-6)


@pytest.mark.parametrize("mode", vi.MODES)
def test_batched_sets_equal_one_by_one(mode):
    model = tiny_vit("registers")
    x = input_for(model, batch=1, seed=3)
    sets = [[0], [1, 2, 3], [5, 6, 9, 10, 15], [], list(range(16))[:-1]]
    both = vi.intervene(model, x, sets, mode=mode, seed=7)
    assert both.logits.shape == (5, 7)
    for k, s in enumerate(sets):
        one = vi.intervene(model, x, [s], mode=mode, seed=7)
        assert torch.allclose(both.logits[k], one.logits[0], atol=1e-5), (mode, k)
        assert torch.equal(both.patches[k], one.patches[0])
    chunked = vi.intervene(model, x, sets, mode=mode, seed=7, batch_size=2)
    assert torch.allclose(chunked.logits, both.logits, atol=1e-5)


def test_noise_keep_by_hand():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=1, seed=1)
    eps = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 0.3
    r = vi.intervene(model, x, [0, 5], mode="noise", keep=True, seed=5, sigma=0.3)
    kept = torch.zeros(32, 32)
    kept[0:8, 0:8] = 1  # patch 0
    kept[8:16, 8:16] = 1  # patch 5 = row 1, col 1
    want = x * kept + eps * (1 - kept)
    assert torch.allclose(r.input, want, atol=1e-6)
    assert torch.allclose(r.logits, fwd(model, want), atol=1e-5)
    expect_region = torch.ones(4, 4, dtype=torch.bool)
    expect_region[0, 0] = expect_region[1, 1] = False
    assert torch.equal(r.patches[0], expect_region)
    # removing instead of keeping: the same noise on the two patches only
    rm = vi.intervene(model, x, [0, 5], mode="noise", seed=5, sigma=0.3)
    assert torch.allclose(rm.input, x * (1 - kept) + eps * kept, atol=1e-6)


def test_pixel_mask_any_pixel_rule_and_blur():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=2, seed=2)
    pix = torch.zeros(32, 32, dtype=torch.bool)
    pix[9, 17] = True  # one pixel of patch (1, 2) = index 6
    r = vi.intervene(model, x, pix, mode="blur", blur_size=5, blur_sigma=1.5)
    assert r.patches.shape == (2, 4, 4) and r.patches[:, 1, 2].all() and int(r.patches.sum()) == 2
    # blur substrate replica: plain 2-D Gaussian, reflect padding
    t = torch.arange(5, dtype=torch.float64) - 2
    k1 = torch.exp(-(t**2) / (2 * 1.5**2))
    k2 = torch.outer(k1, k1) / k1.sum() ** 2
    xp = torch.nn.functional.pad(x.double(), (2, 2, 2, 2), mode="reflect")
    blur = torch.nn.functional.conv2d(xp, k2[None, None].expand(3, 1, 5, 5).contiguous(), groups=3).float()
    reg = pixel_region(model, r.patches, (32, 32))
    assert torch.allclose(r.input, x * (1 - reg) + blur * reg, atol=1e-5)
    j = vi.intervene(model, x, [6], mode="blur", blur_size=5, blur_sigma=1.5)
    assert torch.allclose(j.logits, r.logits, atol=1e-6)


@pytest.mark.parametrize("variant", ["vanilla", "gap", "registers", "distilled", "layerscale"])
def test_drop_matches_token_subset_replica(variant):
    model = tiny_vit(variant)
    x = input_for(model, batch=1, seed=4)
    T = model.num_prefix_tokens
    sets = [[0, 3, 7, 8], [1, 2, 3, 4, 5, 6, 12, 13], [15]]
    r = vi.intervene(model, x, sets, mode="drop")
    tok = tokens_into_blocks(model, x)
    for k, s in enumerate(sets):
        kept = [p for p in range(16) if p not in s]
        sub = torch.cat([tok[:, :T], tok[:, [T + p for p in kept]]], 1)
        ref, _, _ = replica_forward(model, sub)
        assert torch.allclose(r.logits[k].double(), ref[0], atol=1e-5), (variant, k)
        assert r.kept[k].tolist() == kept


def test_delta_topk_target():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=3, seed=5)
    r = vi.intervene(model, x, [1, 2], mode="zero", target=[0, 1, 2], topk=3)
    base = fwd(model, x).softmax(-1)
    assert r.target.tolist() == [0, 1, 2]
    assert torch.allclose(r.delta, r.probs[torch.arange(3), r.target] - base[torch.arange(3), r.target], atol=1e-6)
    bp, bi = base.topk(3)
    assert torch.equal(r.topk.before_indices, bi)
    assert torch.allclose(r.topk.delta, r.probs.gather(1, bi) - bp, atol=1e-6)
    assert torch.allclose(r.topk.after_probs, r.probs.topk(3).values)


@pytest.mark.parametrize("keep", [False, True])
def test_causal_score_by_hand(keep):
    model = tiny_vit("gap")
    x = input_for(model, batch=1, seed=6)
    sets = [[0, 1, 4, 5], [10, 11]]
    got = vi.causal_score(model, x, sets, keep=keep, seed=3)
    base = fwd(model, x).softmax(-1)[0]
    c = int(base.argmax())
    eps = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 0.1
    for k, s in enumerate(sets):
        g = torch.zeros(16, dtype=torch.bool)
        g[s] = True
        region = g.reshape(1, 4, 4)
        M = 1 - pixel_region(model, region, (32, 32))  # 1 on kept pixels when removing
        if keep:
            M = 1 - M
        xk = x * M + eps * (1 - M)
        xr = x + eps * (1 - M)
        want = fwd(model, xk).softmax(-1)[0, c] - fwd(model, xr).softmax(-1)[0, c] + base[c]
        assert abs(float(got[k]) - float(want)) < 1e-5
    for mode in ("noise", "zero", "drop"):
        r = vi.intervene(model, x, sets, mode=mode, keep=keep, seed=3)
        assert torch.allclose(r.causal_score, got, atol=1e-5)


def test_model_left_as_found(model, x):
    model.train()
    model.blocks[0].attn.fused_attn = False
    before = model_state(model)
    g = torch.zeros(*grid_of(model, x), dtype=torch.bool)
    g[0, 0] = True
    for mode in vi.MODES:
        r = vi.intervene(model, x, g, mode=mode)
        _ = r.causal_score
    assert model_state(model) == before
    with pytest.raises(InputError):
        vi.intervene(model, x, g, mode="nope")
    assert model_state(model) == before


def test_base_cache_sees_weight_changes():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=1)
    a = vi.intervene(model, x, [0], mode="zero")
    with torch.no_grad():
        model.head.bias[0] += 5.0
    b = vi.intervene(model, x, [0], mode="zero")
    assert torch.allclose(b.base_logits, fwd(model, x), atol=1e-6)
    assert not torch.allclose(a.base_logits, b.base_logits)
    with pytest.raises(Exception, match="changed"):
        _ = a.causal_score
    with vi.ablate_heads(model, {0: [0, 1, 2, 3]}):
        c = vi.intervene(model, x, [0], mode="zero")
        assert torch.allclose(c.base_logits, fwd(model, x), atol=1e-6)
    assert not torch.allclose(c.base_logits, b.base_logits)


def test_caches_see_new_storage_dtype_and_data_assignment():
    """``model.double()``, ``.to(...)`` and ``param.data = ...`` keep each Parameter object and
    its version counter; the cached setup and base logits must still be recomputed."""
    model = tiny_vit("vanilla").eval()
    x = input_for(model, batch=1, seed=12)
    vi.intervene(model, x, [0], mode="drop")
    model.double()
    r = vi.intervene(model, x, [0], mode="drop")  # was a dtype error from the cached float32 input
    assert r.logits.dtype == r.base_logits.dtype == torch.float64
    torch.testing.assert_close(r.base_logits, fwd(model, x.double()))
    model.float()
    vi.intervene(model, x, [3], mode="blur")
    model.head.bias.data = model.head.bias.data + 2.0  # new storage, same version counter
    r = vi.intervene(model, x, [3], mode="blur")
    torch.testing.assert_close(r.base_logits, fwd(model, x), rtol=1e-5, atol=1e-6)


def test_results_are_ordinary_tensors(model, x):
    """The passes run in inference mode, but what callers get back may be edited in place."""
    res = vi.intervene(model, x, [0, 1], mode="blur")
    for t in (res.logits, res.probs, res.base_logits, res.base_probs, res.delta, res.topk.after_probs):
        assert not t.is_inference()
    res.probs[:, 0] = 0.0  # would raise on an inference tensor
    # one image, one set: the base logits come from the cache; editing them leaves the cache intact
    one = vi.intervene(model, x[:1], [0, 1], mode="drop")
    want = one.base_logits.clone()
    one.base_logits.add_(100.0)
    again = vi.intervene(model, x[:1], [0, 1], mode="drop")
    assert torch.equal(again.base_logits, want) and torch.equal(again.logits, one.logits)


def test_padded_grid_blends_the_cropped_patches():
    """A dynamic_img_pad model on a 30x38 input: the 4x5 grid's last row and column are cut
    by the image border; the brushed patches' visible pixels are replaced, nothing else."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        num_classes=5, dynamic_img_size=True, dynamic_img_pad=True,
    ).eval()
    x = torch.randn(1, 3, 30, 38, generator=torch.Generator().manual_seed(3))
    g = torch.zeros(4, 5, dtype=torch.bool)
    g[1, 2] = g[3, 4] = True  # (3, 4) is the cropped corner patch
    R = pixel_region(model, g[None], (30, 38))
    for mode, S in (("blur", sub.gaussian_blur_reflect(x, 11, 5.0)), ("zero", torch.zeros_like(x))):
        res = vi.intervene(model, x, g, mode=mode)
        torch.testing.assert_close(res.input, x * (1 - R) + S * R)
        torch.testing.assert_close(res.probs, fwd(model, res.input).softmax(-1))


def test_cached_substrates_follow_the_image_and_threads():
    """The blur/noise substrates and the base forward are cached per image batch: a second
    image, and two threads brushing two images at once, each get their own image's numbers
    (checked against hand-blended inputs through the plain forward)."""
    import threading

    model = tiny_vit("vanilla").eval()
    xa, xb = input_for(model, batch=1, seed=21), input_for(model, batch=1, seed=22)
    g = torch.zeros(*grid_of(model, xa), dtype=torch.bool)
    g[1:3, 0:2] = True
    R = pixel_region(model, g[None], xa.shape[-2:])

    def expected(x):
        return fwd(model, x * (1 - R) + sub.gaussian_blur_reflect(x, 11, 5.0) * R).softmax(-1)

    want = {"a": expected(xa), "b": expected(xb)}
    for _ in range(2):  # alternate images: no stale cache entry is reused
        for k, x in (("a", xa), ("b", xb)):
            torch.testing.assert_close(vi.intervene(model, x, g, mode="blur").probs, want[k], rtol=1e-5, atol=1e-6)
    bad: list = []

    def brush(k, x):
        for _ in range(20):
            p = vi.intervene(model, x, g, mode="blur").probs
            if not torch.allclose(p, want[k], rtol=1e-5, atol=1e-6):
                bad.append(k)

    ts = [threading.Thread(target=brush, args=kx) for kx in (("a", xa), ("b", xb))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


def test_counterfactual_changes_prediction_and_is_pruned():
    model = tiny_vit("vanilla", seed=3)
    x = input_for(model, batch=1, seed=8)
    base = fwd(model, x).softmax(-1)[0]
    c = int(base.argmax())
    score_map = torch.arange(16, dtype=torch.float32).flip(0).reshape(4, 4)
    cf = cfs.counterfactual(model, x, mode="zero", order_by=score_map, batch_size=4)
    assert cf.found and cf.target == c
    assert cf.order.tolist() == list(range(16))
    keep = 1 - pixel_region(model, cf.patches[None], (32, 32))
    p = fwd(model, x * keep).softmax(-1)[0]
    assert int(p.argmax()) == cf.new_class != c
    assert abs(cf.path_target[0] - float(base[c])) < 1e-6
    assert len(cf.path_target) == cf.greedy_size + 1
    # greedy prefix: the first cf.greedy_size patches flip, the previous prefix does not
    g = torch.zeros(16)
    g[: cf.greedy_size] = 1
    prev = torch.zeros(16)
    prev[: cf.greedy_size - 1] = 1
    for grid, flips in ((g, True), (prev, False)):
        keep = 1 - pixel_region(model, grid.bool().reshape(1, 4, 4), (32, 32))
        assert (int(fwd(model, x * keep).argmax()) != c) == flips
    # pruned: putting back any single chosen patch restores the prediction
    for p_idx in torch.nonzero(cf.patches.reshape(-1)).reshape(-1).tolist():
        s = cf.patches.reshape(-1).clone()
        s[p_idx] = False
        if s.any():
            keep = 1 - pixel_region(model, s.reshape(1, 4, 4), (32, 32))
            assert int(fwd(model, x * keep).argmax()) == c
    rollout = cfs.counterfactual(model, x, mode="drop", order_by="rollout")
    assert rollout.patches.shape == (4, 4)


def test_bad_input():
    model = tiny_vit("vanilla")
    x = input_for(model, batch=1)
    with pytest.raises(InputError, match=r"shape \(4, 4\)"):
        vi.intervene(model, x, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="out of range"):
        vi.intervene(model, x, [3, 16])
    for given in ([3, 16], torch.tensor([3, 16]), [-1, 2]):  # the list fast path and the tensor path say the same
        bad = 16 if 16 in list(given) else -1
        with pytest.raises(InputError, match=rf"patch index {bad} is out of range: the 4x4 grid has 16 patches"):
            vi.intervene(model, x, given)
    with pytest.raises(InputError, match="out of range"):
        vi.intervene(model, x, [[1], [-1]])
    with pytest.raises(InputError, match="empty"):
        vi.intervene(model, x, [])
    with pytest.raises(InputError, match="did you mean 'blur'"):
        vi.intervene(model, x, [1], mode="blurr")
    with pytest.raises(InputError, match="float"):
        vi.intervene(model, x, torch.zeros(4, 4))
    with pytest.raises(InputError, match="ONE image"):
        vi.intervene(model, input_for(model, batch=2), [[1], [2]])
    with pytest.raises(InputError, match="blur_size"):
        vi.intervene(model, x, [1], mode="blur", blur_size=4)
    with pytest.raises(InputError, match="average"):
        vi.intervene(tiny_vit("gap"), x, np.ones((4, 4), dtype=bool), mode="drop")
    with pytest.raises(InputError, match="average"):  # one of several sets drops every patch
        vi.intervene(tiny_vit("gap"), x, [list(range(16)), [1]], mode="drop")
    with pytest.raises(InputError, match=r"order_by map must have shape \(4, 4\) or \(1, 4, 4\), got \(3, 3\)"):
        cfs.counterfactual(model, x, order_by=torch.zeros(3, 3))
    with pytest.raises(InputError, match=r"got \(3, 3\)"):
        cfs.counterfactual(model, input_for(model, batch=2), order_by=np.zeros((3, 3)))
    from vit_explore.errors import UnsupportedModelError

    for fn in (vi.intervene, vi.causal_score):
        with pytest.raises(UnsupportedModelError, match="timm VisionTransformer"):
            fn("not a model", x, [0])
        # any nn.Module is taken as an image classifier, and told when it does not return logits
        with pytest.raises(UnsupportedModelError, match=r"logits \(B, classes\).*Conv2d returned Tensor\(\d+, 3, 30, 30\)"):
            fn(torch.nn.Conv2d(3, 3, 3), x, [0])
    with pytest.raises(UnsupportedModelError, match=r"Conv2d returned Tensor"):
        cfs.counterfactual(torch.nn.Conv2d(3, 3, 3), x, order_by=torch.zeros(1, 1))
    with pytest.raises(InputError, match=r"order_by map must have shape \(4, 4\) or \(2, 4, 4\)"):
        cfs.counterfactual(model, input_for(model, batch=2), order_by=torch.zeros(3, 4, 4))
    with pytest.raises(InputError, match="target 99 is out of range"):
        cfs.counterfactual(model, input_for(model, batch=2), target=[0, 99])


def test_setup_cache_sees_edits_to_the_same_tensor():
    """The per-(model, image) setup is reused only for equal content: editing the very same
    tensor in place (a new image, or a NaN) is seen by the next call."""
    model = tiny_vit("vanilla").eval()
    x = input_for(model, batch=1, seed=31)
    vi.intervene(model, x, [0], mode="drop")
    with torch.no_grad():
        x[0, :, :8, :8] += 3.0  # in place: same object, new content
    r = vi.intervene(model, x, [0], mode="drop")
    torch.testing.assert_close(r.base_logits, fwd(model, x), rtol=1e-5, atol=1e-6)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        vi.intervene(model, x, [0], mode="drop")


def test_cached_noise_is_seeded_noise_and_bounded():
    like = torch.zeros(1)
    a = sub.cached_noise((3, 3, 8, 8), 5, 0.2, like)
    assert torch.equal(a, torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.2)
    assert sub.cached_noise((3, 3, 8, 8), 5, 0.2, like) is a  # a hit is the same tensor
    assert not torch.equal(sub.cached_noise((3, 3, 8, 8), 6, 0.2, like), a)
    for k in range(10):
        sub.cached_noise((k + 1, 3, 4, 4), 0, 0.1, like)
    assert len(sub._NOISE) <= sub._NOISE.entries


@pytest.mark.parametrize("mode", ["zero", "blur", "drop"])
def test_counterfactual_batch_equals_one_by_one(mode):
    """A batch is searched together (shared forward passes); each image's result is the one
    its own search finds (greedy path, pruned set, new class), for per-image maps and targets."""
    model = tiny_vit("vanilla", seed=3)
    x = input_for(model, batch=3, seed=8)
    maps = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(2))
    targets = fwd(model, x).argmax(-1).tolist()
    targets[1] = int(fwd(model, x[1:2]).softmax(-1)[0].argsort()[-2])  # a non-top class for one image
    both = cfs.counterfactual(model, x, targets, mode=mode, order_by=maps, batch_size=3)
    assert isinstance(both, list) and len(both) == 3
    for b in range(3):
        one = cfs.counterfactual(model, x[b : b + 1], targets[b], mode=mode, order_by=maps[b], batch_size=3)
        got = both[b]
        assert (got.found, got.target, got.new_class, got.greedy_size) == (one.found, one.target, one.new_class, one.greedy_size)
        assert torch.equal(got.patches, one.patches) and torch.equal(got.order, one.order)
        np.testing.assert_allclose(got.path_target, one.path_target, atol=1e-6)
        torch.testing.assert_close(got.probs, one.probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keep", [False, True])
def test_one_dropped_brush_equals_the_general_path(keep):
    """A patch list on one image in mode 'drop' keeps its region as a Python list (its
    tensors are built on first access); every field equals the same set given as a bool grid
    (the general path)."""
    model = tiny_vit("registers").eval()
    x = input_for(model, batch=1, seed=9)
    brush = [0, 5, 6, 11]
    grid = torch.zeros(4, 4, dtype=torch.bool)
    grid.view(-1)[brush] = True
    fast = vi.intervene(model, x, brush, mode="drop", keep=keep, target=2)
    slow = vi.intervene(model, x, grid, mode="drop", keep=keep, target=2)
    assert torch.equal(fast.logits, slow.logits) and torch.equal(fast.base_logits, slow.base_logits)
    assert torch.equal(fast.probs, slow.probs) and torch.equal(fast.delta, slow.delta)
    assert torch.equal(fast.patches, slow.patches) and fast.patches.dtype == torch.bool
    assert torch.equal(fast.image_index, slow.image_index) and torch.equal(fast.target, slow.target)
    assert [k.tolist() for k in fast.kept] == [k.tolist() for k in slow.kept]
    assert fast.kept[0].tolist() == ([p for p in range(16) if p in brush] if keep else
                                     [p for p in range(16) if p not in brush])
    assert torch.equal(fast.causal_score, slow.causal_score)
    assert torch.equal(fast.topk.after_indices, slow.topk.after_indices)
