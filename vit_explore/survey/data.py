"""What ``vx.survey`` accepts as a dataset, behind one interface: ``len``, a batch of model
inputs by index, display images by index, and a cheap identity key for the store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _norm(model: nn.Module) -> tuple[tuple[int, int], tuple, tuple]:
    from ..inputs import data_config

    cfg = data_config(model)
    return tuple(cfg["input_size"][1:]), tuple(cfg["mean"]), tuple(cfg["std"])


def uint8_to_model(images: np.ndarray, size: tuple[int, int], mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> normalised float32 (n, 3, H, W), bilinear resize (no crop) when needed."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return (x - m) / s


class Source:
    """A dataset as ``vx.survey`` sees it.

    ``batch(idx)`` -> (len(idx), 3, H, W) float32 model inputs on the CPU;
    ``display(i)`` -> (H, W, 3) uint8 image of the model input (for the Atlas);
    ``labels`` -> (n,) int64 labels the data carries itself, or None.
    """

    name = "data"
    labels: np.ndarray | None = None

    def __init__(self, model: nn.Module) -> None:
        self.size, self.mean, self.std = _norm(model)

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def batch(self, idx: Sequence[int]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def display(self, i: int) -> np.ndarray:
        """The model input of image ``i`` un-normalised to (H, W, 3) uint8."""
        x = self.batch([i])[0]
        m = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return ((x * s + m).clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)

    def key(self) -> str:
        """Identity of the data for the store: its length and a hash of up to 9 evenly spaced inputs
        (a cheap check, not a proof that every image is the same)."""
        n = len(self)
        h = hashlib.sha256(f"{type(self).__name__}:{n}".encode())
        picks = sorted(set(np.rint(np.linspace(0, n - 1, num=min(n, 9))).astype(int).tolist()))
        x = self.batch(picks).to(torch.float32).contiguous()
        h.update(str(tuple(x.shape)).encode())
        h.update(np.round(x.numpy(), 5).tobytes())
        return h.hexdigest()[:24]


class TensorSource(Source):
    name = "tensor"

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        super().__init__(model)
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise InputError(f"a tensor dataset must be float (N, 3, H, W) model inputs, got {x.dtype} {tuple(x.shape)}")
        self.x = x

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, idx: Sequence[int]) -> torch.Tensor:
        return self.x[torch.as_tensor(list(idx), dtype=torch.long)].detach().to("cpu", torch.float32)


class ArraySource(Source):
    """uint8 (N, H, W, 3) images, resized (bilinear, no crop) and normalised with the model's config."""

    name = "array"

    def __init__(self, model: nn.Module, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        super().__init__(model)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InputError(
                f"an image array must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}; "
                "pass float model inputs as a torch tensor (N, 3, H, W) instead"
            )
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, idx: Sequence[int]) -> torch.Tensor:
        return uint8_to_model(self.images[np.asarray(list(idx), dtype=np.int64)], self.size, self.mean, self.std)


class ListSource(Source):
    """A list of PIL images, uint8 (H, W, 3) arrays or (3, H, W) tensors; preprocessed with the model's
    own timm transform (PIL and arrays) or taken as given (tensors)."""

    name = "list"

    def __init__(self, model: nn.Module, items: Sequence[Any]) -> None:
        super().__init__(model)
        if len(items) == 0:
            raise InputError("the dataset is empty")
        self.items, self.model = items, model

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, idx: Sequence[int]) -> torch.Tensor:
        from ..inputs import preprocess

        out = []
        for i in idx:
            it = self.items[i]
            if isinstance(it, torch.Tensor):
                if it.ndim != 3:
                    raise InputError(f"image {i}: a tensor item must be (3, H, W), got {tuple(it.shape)}")
                out.append(it.detach().to("cpu", torch.float32))
            else:
                out.append(preprocess(self.model, it)[0].to("cpu", torch.float32))
        return torch.stack(out)


class FolderSource(ListSource):
    """Every image file under a folder (recursively, sorted by path). A first-level sub-folder per class
    (torchvision's ImageFolder layout) gives ``labels`` in sorted folder order."""

    name = "folder"

    def __init__(self, model: nn.Module, root: str | os.PathLike[str]) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InputError(f"image folder {str(root)!r} does not exist or is not a folder")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
        super().__init__(model, files)
        self.files = files
        tops = [p.relative_to(root).parts for p in files]
        if all(len(t) >= 2 for t in tops):
            classes = sorted({t[0] for t in tops})
            self.class_names = classes
            self.labels = np.array([classes.index(t[0]) for t in tops], dtype=np.int64)

    def batch(self, idx: Sequence[int]) -> torch.Tensor:
        from PIL import Image

        from ..inputs import preprocess

        out = []
        for i in idx:
            with Image.open(self.files[i]) as im:
                out.append(preprocess(self.model, im.convert("RGB"))[0].to("cpu", torch.float32))
        return torch.stack(out)

    def key(self) -> str:
        h = hashlib.sha256(super().key().encode())
        for p in self.files:
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:24]


class DatasetSource(Source):
    """A map-style torch Dataset whose items are an image tensor (3, H, W) or ``(image, label, ...)``."""

    name = "dataset"

    def __init__(self, model: nn.Module, ds: Any) -> None:
        super().__init__(model)
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def _item(self, i: int) -> torch.Tensor:
        it = self.ds[i]
        if isinstance(it, (tuple, list)):
            it = it[0]
        if not isinstance(it, torch.Tensor) or it.ndim != 3:
            raise InputError(
                f"dataset item {i}: expected a (3, H, W) tensor or (tensor, label), got {type(it).__name__}; "
                "give the Dataset a transform that returns model inputs"
            )
        return it.detach().to("cpu", torch.float32)

    def batch(self, idx: Sequence[int]) -> torch.Tensor:
        return torch.stack([self._item(int(i)) for i in idx])


def preset(name: str) -> Any:
    """``"shapes-spurious"`` (1,000 images) or ``"shapes-spurious:2000"`` -> the test set ``ShapesData``."""
    from ..datasets import synthetic

    base, _, count = name.partition(":")
    if base not in synthetic.PRESETS:
        raise InputError(f"unknown preset {base!r}; use one of {sorted(synthetic.PRESETS)} (optionally ':N' images)")
    try:
        n = int(count) if count else 1000
    except ValueError:
        raise InputError(f"preset {name!r}: the part after ':' must be an image count, e.g. '{base}:2000'") from None
    if n < 1:
        raise InputError(f"preset {name!r}: the image count must be positive")
    return synthetic.make_preset(base, n=n)


def as_source(model: nn.Module, data: Any) -> Source:
    """Wrap any accepted dataset in a :class:`Source` (see ``vx.survey``)."""
    from ..datasets.synthetic import ShapesData, ShapesDataset

    if isinstance(data, Source):
        return data
    if isinstance(data, str) and ":" not in data and Path(data).expanduser().is_dir():
        return FolderSource(model, data)
    if isinstance(data, os.PathLike):
        return FolderSource(model, data)
    if isinstance(data, str):
        from ..datasets import synthetic

        if data.partition(":")[0] in synthetic.PRESETS:
            data = preset(data)
        else:
            raise InputError(f"{data!r} is neither a folder nor a preset ({sorted(synthetic.PRESETS)})")
    if isinstance(data, ShapesDataset):
        data = data.data
    if isinstance(data, ShapesData):
        src = ArraySource(model, data.images, data.labels.astype(np.int64))
        src.name = "shapes"
        return src
    if isinstance(data, torch.Tensor):
        return TensorSource(model, data)
    if isinstance(data, np.ndarray):
        return ArraySource(model, data)
    if isinstance(data, (list, tuple)):
        return ListSource(model, data)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return DatasetSource(model, data)
    raise InputError(
        f"cannot survey a {type(data).__name__}; give images (a list, a uint8 (N, H, W, 3) array, a float "
        "(N, 3, H, W) tensor), a torch Dataset, an image folder or a preset name such as 'shapes-spurious:2000'"
    )
