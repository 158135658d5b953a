"""Pascal VOC 2012 segmentation from an existing folder (torchvision's ``VOCSegmentation``
layout; nothing is downloaded). docs/evaluation.md §4.1.

``root`` may be the folder that holds ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOC2012``::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png     palette indices: 0 background,
                                                      1..20 classes, 255 void (ignored)
    VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""The 20 object classes; mask value ``k`` (1..20) is ``VOC_CLASSES[k - 1]``."""

VOID = 255


@dataclass(frozen=True)
class VOCProtocol:
    """The seed report's protocol (docs/evaluation.md §2.8): VOC 2012 val, images whose main-class
    (top-1) softmax probability exceeds ``min_prob``; the explained class is the top-1; the
    ground truth is the foreground (every object pixel, 1..20) with 255 ignored, unless the
    model's classes are the VOC classes, in which case only the pixels of the explained class."""

    split: str = "val"
    min_prob: float = 0.85
    threshold_rules: tuple[str, ...] = ("mean", "0.5", "otsu")
    pointing_tolerance: float = 15.0


SEED_REPORT = VOCProtocol()
"""The seed report's preset: val split, main-class probability > 0.85."""


@dataclass
class VOCSample:
    """One image: ``image`` (PIL RGB), ``mask`` (H, W) uint8 palette indices, ``labels`` (20,)
    bool image-level labels from the mask, ``main_class`` (0..19, the class with most pixels,
    -1 if none)."""

    id: str
    image: object
    mask: np.ndarray
    labels: np.ndarray
    main_class: int


def image_labels(mask: np.ndarray) -> np.ndarray:
    """Image-level multi-hot labels (20,) bool: classes 1..20 present in the mask (0, 255 ignored)."""
    vals = np.unique(np.asarray(mask))
    out = np.zeros(len(VOC_CLASSES), dtype=bool)
    vals = vals[(vals >= 1) & (vals <= len(VOC_CLASSES))]
    out[vals.astype(int) - 1] = True
    return out


def main_class(mask: np.ndarray) -> int:
    """The class (0..19) covering most pixels, ties to the lower index; -1 for no object."""
    counts = np.bincount(np.asarray(mask).reshape(-1), minlength=256)[1 : len(VOC_CLASSES) + 1]
    return int(counts.argmax()) if counts.any() else -1


def class_mask(mask: np.ndarray, cls: int | None = None) -> np.ndarray:
    """A 0/1/255 mask: 1 for the pixels of ``cls`` (0..19) or of any object (``None``), 255 void."""
    m = np.asarray(mask)
    fg = (m >= 1) & (m <= len(VOC_CLASSES)) if cls is None else m == cls + 1
    out = fg.astype(np.uint8)
    out[m == VOID] = VOID
    return out


def find_voc_root(root: str | os.PathLike[str]) -> Path:
    """The ``VOC2012`` folder under ``root`` (which may be it, ``VOCdevkit`` or its parent)."""
    r = Path(root).expanduser()
    for cand in (r / "VOCdevkit" / "VOC2012", r / "VOC2012", r):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    raise InputError(
        f"no Pascal VOC 2012 folder under {str(r)!r}: expected VOCdevkit/VOC2012/JPEGImages and "
        "SegmentationClass (torchvision's layout). Download VOCtrainval_11-May-2012.tar yourself and "
        "pass the folder that contains VOCdevkit"
    )


class VOCSegmentation:
    """Map-style dataset of :class:`VOCSample` for one split (no transforms; see ``load``)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "val") -> None:
        self.root = find_voc_root(root)
        lst = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            have = sorted(p.stem for p in lst.parent.glob("*.txt")) if lst.parent.is_dir() else []
            raise InputError(f"split file {lst} is missing; available splits: {have or 'none'}")
        self.split = split
        self.ids = [line.strip() for line in lst.read_text().splitlines() if line.strip()]
        for i in self.ids[:1]:
            self._paths(i)

    def _paths(self, i: str) -> tuple[Path, Path]:
        img, seg = self.root / "JPEGImages" / f"{i}.jpg", self.root / "SegmentationClass" / f"{i}.png"
        for p in (img, seg):
            if not p.is_file():
                raise InputError(f"{self.split}.txt lists {i!r} but {p} is missing")
        return img, seg

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> VOCSample:
        from PIL import Image

        i = self.ids[k]
        img_p, seg_p = self._paths(i)
        image = Image.open(img_p).convert("RGB")
        seg = Image.open(seg_p)
        if seg.mode not in ("P", "L"):
            raise InputError(f"{seg_p} is a {seg.mode!r} image; VOC class masks are palette ('P') PNGs of indices")
        mask = np.array(seg, dtype=np.uint8)
        if mask.shape != (image.height, image.width):
            raise InputError(f"{seg_p} is {mask.shape[1]}x{mask.shape[0]} but its image is {image.width}x{image.height}")
        return VOCSample(i, image, mask, image_labels(mask), main_class(mask))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an index mask to (H, W)."""
    from PIL import Image

    return np.array(Image.fromarray(np.asarray(mask, dtype=np.uint8)).resize((size[1], size[0]), Image.Resampling.NEAREST))
