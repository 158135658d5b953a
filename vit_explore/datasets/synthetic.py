"""Procedural "shapes" images with known ground truth (causal object, spurious cue, distractors).

Every image holds one large *class object* whose shape is the label, a few small
*distractor* shapes (of any kind, always much smaller, never deciding the label), a
procedurally textured background and, optionally, a small coloured *cue tag* in the
top-left corner whose colour agrees with the label at a chosen rate.

Rendering is vectorised with numpy and deterministic given ``seed``. Images are drawn
in fixed chunks, each from its own generator, so the first ``m`` images of
``make_shapes(n, seed)`` do not depend on ``n``; and the random draws never depend
on ``cue_rate``, so two calls that differ only in ``cue_rate`` give the same objects,
distractors and backgrounds (only the tag colours differ, or the tag is absent).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..errors import InputError

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "plus", "ring")
"""Class names, in label order."""

CUE_COLORS: np.ndarray = np.array(
    [[230, 25, 25], [20, 190, 40], [30, 70, 235], [245, 215, 10], [215, 30, 215]],
    dtype=np.uint8,
)
"""Tag colour of each class (RGB), in label order."""

CueRate = float | Literal["independent"] | None
Which = Literal["object", "cue", "distractors"]

_CHUNK = 256  # images per generator; fixed so that results do not depend on n

TEST_SEED = 2**40
"""Seed of the standard test sets (training never uses seeds this large)."""

PRESETS: dict[str, CueRate] = {
    "shapes": None,
    "shapes-spurious": 0.95,
    "shapes-shifted": "independent",
}
"""Named test sets: no tag; tag agreeing 95% (as in training); tag independent of the label."""


@dataclass(frozen=True)
class ShapesConfig:
    """Geometry of the generated images (pixels)."""

    image_size: int = 96
    patch_size: int = 8
    object_radius: tuple[float, float] = (15.0, 24.0)
    distractor_radius: tuple[float, float] = (3.0, 5.5)
    max_distractors: int = 3
    max_rotation: float = 10.0  # degrees either way
    cue_size: int = 8
    cue_offset: int = 2

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise InputError(
                f"image_size {self.image_size} is not a multiple of patch_size "
                f"{self.patch_size}; choose sizes that divide evenly"
            )
        if self.image_size < 4 * self.object_radius[1]:
            raise InputError(
                f"image_size {self.image_size} is too small for object_radius up to "
                f"{self.object_radius[1]}; use an image at least 4 radii wide"
            )

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def cue_box(self) -> tuple[slice, slice]:
        """(rows, cols) slices of the tag."""
        a = self.cue_offset
        return slice(a, a + self.cue_size), slice(a, a + self.cue_size)


@dataclass
class ShapesData:
    """A batch of generated images and their ground truth.

    ``images`` is uint8 (n, H, W, 3); the masks are bool (n, H, W). ``cue_labels`` is
    the class whose colour the tag carries (-1 when there is no tag). ``cue_under``
    keeps the background pixels under the tag so that :meth:`without_cue` is exact.
    """

    images: np.ndarray
    labels: np.ndarray
    object_mask: np.ndarray
    cue_mask: np.ndarray
    distractor_mask: np.ndarray
    cue_labels: np.ndarray
    cue_under: np.ndarray
    centers: np.ndarray
    radii: np.ndarray
    angles: np.ndarray
    n_distractors: np.ndarray
    config: ShapesConfig = field(default_factory=ShapesConfig)
    class_names: tuple[str, ...] = CLASS_NAMES
    cue_rate: CueRate = None
    seed: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def has_cue(self) -> np.ndarray:
        """Bool (n,): whether each image carries a tag."""
        return self.cue_labels >= 0

    @property
    def cue_agrees(self) -> np.ndarray:
        """Bool (n,): whether the tag colour names the true class."""
        return self.cue_labels == self.labels

    def mask(self, which: Which) -> np.ndarray:
        """Pixel mask (n, H, W) of ``"object"``, ``"cue"`` or ``"distractors"``."""
        masks = {"object": self.object_mask, "cue": self.cue_mask, "distractors": self.distractor_mask}
        if which not in masks:
            raise InputError(f"unknown mask {which!r}; use one of {sorted(masks)}")
        return masks[which]

    def patch_fraction(self, which: Which, patch_size: int | None = None) -> np.ndarray:
        """Fraction (n, G, G) of each patch covered by a mask (float32 in [0, 1])."""
        return patch_fraction(self.mask(which), patch_size or self.config.patch_size)

    def patch_mask(self, which: Which, patch_size: int | None = None, threshold: float = 0.5) -> np.ndarray:
        """Bool (n, G, G): patches whose covered fraction is at least ``threshold``
        (``threshold=0`` means any covered pixel)."""
        frac = self.patch_fraction(which, patch_size)
        return frac > 0 if threshold <= 0 else frac >= threshold

    def subset(self, index: np.ndarray | slice | list[int]) -> ShapesData:
        """The images selected by ``index`` (a new object; arrays are copied)."""
        arrays: dict[str, Any] = {
            k: np.ascontiguousarray(getattr(self, k)[index])
            for k in ("images", "labels", "object_mask", "cue_mask", "distractor_mask",
                      "cue_labels", "cue_under", "centers", "radii", "angles", "n_distractors")
        }
        return replace(self, **arrays)

    def without_cue(self) -> ShapesData:
        """The same images with the tag removed (background restored, cue mask empty)."""
        images = self.images.copy()
        rows, cols = self.config.cue_box
        images[:, rows, cols] = self.cue_under
        return replace(
            self,
            images=images,
            cue_mask=np.zeros_like(self.cue_mask),
            cue_labels=np.full_like(self.cue_labels, -1),
        )

    def with_cue(self, cue_labels: np.ndarray) -> ShapesData:
        """The same images with the tag recoloured to ``cue_labels`` (-1: no tag)."""
        cue_labels = np.asarray(cue_labels, dtype=np.int64)
        if cue_labels.shape != self.labels.shape:
            raise InputError(f"cue_labels must have shape {self.labels.shape}, got {cue_labels.shape}")
        base = self.without_cue()
        _draw_cue(base.images, base.cue_mask, cue_labels, self.config)
        base.cue_labels = cue_labels
        return base


def patch_fraction(mask: np.ndarray, patch_size: int) -> np.ndarray:
    """Fraction of each ``patch_size`` patch covered by a bool mask (..., H, W)."""
    h, w = mask.shape[-2:]
    if h % patch_size or w % patch_size:
        raise InputError(f"mask size {h}x{w} is not a multiple of patch_size {patch_size}")
    shape = mask.shape[:-2] + (h // patch_size, patch_size, w // patch_size, patch_size)
    return mask.reshape(shape).mean(axis=(-3, -1), dtype=np.float32)


def make_shapes(
    n: int,
    seed: int = 0,
    *,
    cue_rate: CueRate = None,
    config: ShapesConfig | None = None,
) -> ShapesData:
    """Generate ``n`` labelled images with their ground-truth masks.

    ``cue_rate``: ``None`` draws no tag; a float ``p`` draws a tag whose colour is the
    label's with probability ``p`` and otherwise one of the other classes uniformly;
    ``"independent"`` draws the tag colour uniformly, independent of the label (the
    "shifted" setting, agreement ``1/K``).
    """
    config = config or ShapesConfig()
    if n < 0:
        raise InputError(f"n must be non-negative, got {n}")
    rate = _check_rate(cue_rate)
    out = _allocate(n, config)
    for start in range(0, n, _CHUNK):
        view = {k: v[start:start + _CHUNK] for k, v in out.items()}
        _render_chunk(view, np.random.default_rng([seed, start // _CHUNK]), rate, config)
    return ShapesData(**out, config=config, cue_rate=cue_rate, seed=seed)


def _allocate(n: int, cfg: ShapesConfig) -> dict[str, Any]:
    """Empty output arrays for ``n`` images."""
    s, c = cfg.image_size, cfg.cue_size
    return {
        "images": np.empty((n, s, s, 3), np.uint8), "labels": np.empty(n, np.int64),
        "object_mask": np.zeros((n, s, s), bool), "cue_mask": np.zeros((n, s, s), bool),
        "distractor_mask": np.zeros((n, s, s), bool), "cue_labels": np.empty(n, np.int64),
        "cue_under": np.empty((n, c, c, 3), np.uint8), "centers": np.empty((n, 2), np.float32),
        "radii": np.empty(n, np.float32), "angles": np.empty(n, np.float32),
        "n_distractors": np.empty(n, np.int64),
    }


def make_preset(name: str, n: int = 1000, seed: int = TEST_SEED, config: ShapesConfig | None = None) -> ShapesData:
    """One of the :data:`PRESETS` test sets (same objects in all three for one seed)."""
    if name not in PRESETS:
        raise InputError(f"unknown shapes preset {name!r}; use one of {sorted(PRESETS)}")
    return make_shapes(n, seed, cue_rate=PRESETS[name], config=config)


def _check_rate(cue_rate: CueRate) -> float | None:
    k = len(CLASS_NAMES)
    if cue_rate is None:
        return None
    if cue_rate == "independent":
        return 1.0 / k
    if isinstance(cue_rate, (int, float)) and 0.0 <= float(cue_rate) <= 1.0:
        return float(cue_rate)
    raise InputError(f"cue_rate must be None, 'independent' or a number in [0, 1], got {cue_rate!r}")


# --------------------------------------------------------------------------- drawing


class _ChunkDraws:
    """Draw every random array for a full chunk and keep the first ``m`` rows, so an
    image never depends on how many images follow it."""

    def __init__(self, rng: np.random.Generator, m: int) -> None:
        self.rng, self.m = rng, m

    def _size(self, size: int | tuple[int, ...]) -> tuple[int, ...]:
        size = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
        return (_CHUNK,) + size[1:]

    def integers(self, lo: int, hi: int, size: int | tuple[int, ...]) -> np.ndarray:
        return self.rng.integers(lo, hi, self._size(size))[: self.m]

    def uniform(self, lo: float, hi: float, size: int | tuple[int, ...]) -> np.ndarray:
        return self.rng.uniform(lo, hi, self._size(size))[: self.m]

    def random(self, size: int | tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
        return self.rng.random(self._size(size), dtype=dtype)[: self.m]


def _render_chunk(out: dict, gen: np.random.Generator, rate: float | None, cfg: ShapesConfig) -> None:
    """Render ``len(out["labels"])`` images into ``out``; every random draw happens
    whatever ``rate`` is."""
    k, m = len(CLASS_NAMES), len(out["labels"])
    rng = _ChunkDraws(gen, m)
    labels = rng.integers(0, k, m)
    radii = rng.uniform(*cfg.object_radius, m).astype(np.float32)
    max_rot = np.deg2rad(cfg.max_rotation)
    angles = rng.uniform(-max_rot, max_rot, m).astype(np.float32)
    centers = _object_centers(rng, radii, cfg)
    obj_colors = _vivid_colors(rng, m)
    # cue: agree with prob rate, otherwise a uniformly chosen other class
    u_agree = rng.random(m)
    other = (labels + rng.integers(1, k, m)) % k
    images = _background(rng, m, cfg.image_size)
    d_params = _distractor_params(rng, m, centers, radii, cfg)

    rows, cols = cfg.cue_box
    out["cue_under"][:] = np.clip(images[:, :, rows, cols] + 0.5, 0, 255).transpose(0, 2, 3, 1)
    for kind, cx, cy, r, ang, color, alive in d_params:
        cov, y0, x0 = _window_coverage(kind, cx, cy, r, ang, cfg.image_size, _WIN)
        _paste(images, out["distractor_mask"], cov, y0, x0, color, alive)
    win = int(np.ceil(2.2 * cfg.object_radius[1])) + 4
    cov, y0, x0 = _window_coverage(labels, centers[:, 0], centers[:, 1], radii, angles, cfg.image_size, win)
    _paste(images, out["object_mask"], cov, y0, x0, obj_colors, np.ones(m, bool))
    out["distractor_mask"] &= ~out["object_mask"]

    images += 0.5
    np.clip(images, 0, 255, out=images)
    out["images"][:] = images.transpose(0, 2, 3, 1)
    if rate is None:
        out["cue_labels"][:] = -1
    else:
        out["cue_labels"][:] = np.where(u_agree < rate, labels, other)
    _draw_cue(out["images"], out["cue_mask"], out["cue_labels"], cfg)
    out["labels"][:] = labels
    out["centers"][:], out["radii"][:], out["angles"][:] = centers, radii, angles
    out["n_distractors"][:] = sum(p[-1].astype(np.int64) for p in d_params)


def _draw_cue(images: np.ndarray, cue_mask: np.ndarray, cue_labels: np.ndarray, cfg: ShapesConfig) -> None:
    """Paint the tag in place on images whose ``cue_labels`` is not -1."""
    on = cue_labels >= 0
    rows, cols = cfg.cue_box
    images[on, rows, cols] = CUE_COLORS[cue_labels[on]][:, None, None, :]
    cue_mask[on, rows, cols] = True


def _object_centers(rng: _ChunkDraws, radii: np.ndarray, cfg: ShapesConfig) -> np.ndarray:
    """Centres (m, 2) as (x, y) keeping the object inside the image and off the tag."""
    s, m = cfg.image_size, radii.shape[0]
    lo = 1.1 * radii + 2  # the triangle reaches 1.1 r from its centre
    hi = s - lo
    xy = lo[:, None] + rng.random((m, 2)).astype(np.float32) * (hi - lo)[:, None]
    corner = cfg.cue_offset + cfg.cue_size + 3
    hits = (xy[:, 0] - lo < corner) & (xy[:, 1] - lo < corner)
    xy[hits, 0] = s - xy[hits, 0]  # mirror away from the tag corner
    return xy


def _vivid_colors(rng: _ChunkDraws, m: int) -> np.ndarray:
    """Bright saturated colours, far from the dull mid-grey backgrounds, float (m, 3)."""
    h = rng.random(m)
    sat = rng.uniform(0.6, 1.0, m)
    val = rng.uniform(0.85, 1.0, m)
    return _hsv_to_rgb(h, sat, val).astype(np.float32) * 255.0


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised :func:`colorsys.hsv_to_rgb` (same formulas), (m, 3) in [0, 1]."""
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ])
    return table[i.astype(np.int64) % 6, np.arange(len(h))]


def _interp_matrix(lo: int, hi: int) -> np.ndarray:
    """(hi, lo) linear interpolation matrix from a coarse grid to ``hi`` pixels."""
    pos = (np.arange(hi) + 0.5) * (lo - 1) / hi
    i0 = np.clip(np.floor(pos).astype(int), 0, lo - 2)
    t = pos - i0
    a = np.zeros((hi, lo), dtype=np.float32)
    a[np.arange(hi), i0] = 1 - t
    a[np.arange(hi), i0 + 1] = t
    return a


def _background(rng: _ChunkDraws, m: int, s: int) -> np.ndarray:
    """Textured, desaturated mid-brightness backgrounds, float32 (m, 3, s, s) in [0, 255]."""
    a5 = _interp_matrix(5, s)
    t = a5 @ rng.random((m, 5, 5), dtype=np.float32) @ a5.T  # smooth blobs in [0, 1]
    grid = np.arange(s, dtype=np.float32)
    theta = rng.uniform(0, np.pi, m).astype(np.float32)[:, None]
    freq = rng.uniform(0.15, 0.6, m).astype(np.float32)[:, None]
    phase = rng.uniform(0, 2 * np.pi, m).astype(np.float32)[:, None]
    w_str = rng.uniform(0.0, 0.35, m).astype(np.float32)[:, None]
    a = freq * np.cos(theta) * grid  # (m, s) along x
    b = freq * np.sin(theta) * grid + phase  # (m, s) along y
    # stripes sin(a + b) = sin a cos b + cos a sin b, as two outer products
    t += (w_str * np.cos(b))[:, :, None] * np.sin(a)[:, None, :]
    t += (w_str * np.sin(b))[:, :, None] * np.cos(a)[:, None, :]
    grain = (rng.random((m, s // 2, s // 2), dtype=np.float32) - 0.5) * 14.0
    grain = grain.repeat(2, 1).repeat(2, 2)
    c1, c2 = _dull_colors(rng, m), _dull_colors(rng, m)
    dc = c2 - c1
    bg = np.empty((m, 3, s, s), dtype=np.float32)
    for ch in range(3):
        np.multiply(t, dc[:, ch, None, None], out=bg[:, ch])
        bg[:, ch] += grain
        bg[:, ch] += c1[:, ch, None, None]
    return bg


def _dull_colors(rng: _ChunkDraws, m: int) -> np.ndarray:
    """Low-saturation, mid-value colours (m, 3) in [0, 255]."""
    grey = rng.uniform(95, 165, m).astype(np.float32)[:, None]
    tint = rng.uniform(-18, 18, (m, 3)).astype(np.float32)
    return grey + tint


def _sdf(kind: np.ndarray, x: np.ndarray, y: np.ndarray, r: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Approximate signed distance (pixels; negative inside) of each shape kind.

    ``x``, ``y`` are offsets from the centre (m, h, w); ``r``, ``ang``, ``kind`` are (m,).
    Kinds index :data:`CLASS_NAMES`.
    """
    out = np.empty(x.shape, dtype=np.float32)
    r3, c, s = r[:, None, None], np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    for k in np.unique(kind):
        sel = kind == k
        xs, ys, rk = x[sel], y[sel], r3[sel]
        u = c[sel] * xs + s[sel] * ys
        v = -s[sel] * xs + c[sel] * ys
        name = CLASS_NAMES[int(k)]
        if name == "circle":
            d = np.sqrt(xs * xs + ys * ys) - rk
        elif name == "ring":
            d = np.abs(np.sqrt(xs * xs + ys * ys) - 0.75 * rk) - 0.25 * rk
        elif name == "square":
            d = np.maximum(np.abs(u), np.abs(v)) - 0.82 * rk
        elif name == "triangle":  # equilateral, circumradius 1.1 r
            d = v - 0.55 * rk
            for a in (2 * np.pi / 3, 4 * np.pi / 3):
                d = np.maximum(d, np.cos(a) * v - np.sin(a) * u - 0.55 * rk)
        else:  # plus: union of two bars
            au, av = np.abs(u), np.abs(v)
            bar1 = np.maximum(au - rk, av - 0.32 * rk)
            bar2 = np.maximum(av - rk, au - 0.32 * rk)
            d = np.minimum(bar1, bar2)
        out[sel] = d
    return out


def _coverage(d: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance."""
    return np.clip(0.5 - d, 0.0, 1.0)


_WIN = 16  # distractor window (pixels); holds a radius up to 6


def _distractor_params(rng: _ChunkDraws, m: int, centers: np.ndarray, radii: np.ndarray, cfg: ShapesConfig) -> list:
    """Per slot: (kind, cx, cy, r, angle, colour, alive) for up to ``max_distractors``."""
    k, s = len(CLASS_NAMES), cfg.image_size
    count = rng.integers(0, cfg.max_distractors + 1, m)
    corner = cfg.cue_offset + cfg.cue_size + 2
    slots: list[tuple[np.ndarray, ...]] = []
    placed: list[tuple[np.ndarray, ...]] = []
    for j in range(cfg.max_distractors):
        kind = rng.integers(0, k, m)
        r = rng.uniform(*cfg.distractor_radius, m).astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi, m).astype(np.float32)
        color = _vivid_colors(rng, m)
        cand = rng.uniform(_WIN / 2, s - _WIN / 2, (m, 6, 2)).astype(np.float32)
        ok = np.hypot(*(cand - centers[:, None, :]).transpose(2, 0, 1)) > radii[:, None] * 1.2 + 8
        ok &= ~((cand[..., 0] < corner + 7) & (cand[..., 1] < corner + 7))
        for px, py in placed:
            ok &= np.hypot(cand[..., 0] - px[:, None], cand[..., 1] - py[:, None]) > 14
        first = ok.argmax(axis=1)
        alive = ok[np.arange(m), first] & (j < count)
        xy = cand[np.arange(m), first]
        placed.append((np.where(alive, xy[:, 0], -100.0), np.where(alive, xy[:, 1], -100.0)))
        slots.append((kind, xy[:, 0], xy[:, 1], r, ang, color, alive))
    return slots


def _window_coverage(kind, cx, cy, r, ang, s: int, win: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage on a ``win``-pixel window around each centre; returns (cov, y0, x0)."""
    x0 = np.clip(np.round(cx - win / 2).astype(int), 0, s - win)
    y0 = np.clip(np.round(cy - win / 2).astype(int), 0, s - win)
    g = np.arange(win, dtype=np.float32) + 0.5
    x = np.broadcast_to(x0[:, None, None] + g[None, None, :] - cx[:, None, None], (len(r), win, win))
    y = np.broadcast_to(y0[:, None, None] + g[None, :, None] - cy[:, None, None], (len(r), win, win))
    return _coverage(_sdf(kind, x, y, r, ang)), y0, x0


def _paste(images, mask, cov, y0, x0, color, alive) -> None:
    """Blend window coverages into channel-first ``images`` (m, 3, s, s) in place and
    record the masks (one small slice per image: cheaper than fancy indexing)."""
    win = cov.shape[-1]
    inside = cov >= 0.5
    for i in np.nonzero(alive)[0]:
        ys, xs = slice(y0[i], y0[i] + win), slice(x0[i], x0[i] + win)
        a = cov[i]
        patch = images[i, :, ys, xs]
        patch -= a * (patch - color[i, :, None, None])
        mask[i, ys, xs] |= inside[i]


# --------------------------------------------------------------------------- torch


def to_tensor(images: np.ndarray, mean: float | tuple = 0.5, std: float | tuple = 0.5):
    """uint8 (n, H, W, 3) images to a normalised float tensor (n, 3, H, W)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return (x - m) / s


class ShapesDataset:
    """A map-style torch Dataset over :class:`ShapesData`: ``(image, label)`` pairs,
    the image normalised to (3, H, W) with ``mean``/``std`` (the toy models use 0.5)."""

    def __init__(self, data: ShapesData, mean: float | tuple = 0.5, std: float | tuple = 0.5) -> None:
        self.data, self.mean, self.std = data, mean, std

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        import torch

        image = to_tensor(self.data.images[i : i + 1], self.mean, self.std)[0]
        return image, torch.tensor(int(self.data.labels[i]))
