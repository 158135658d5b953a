"""The on-disk store of a survey's maps: numpy memmaps in one folder per (model, method, params, data).

Layout of ``<root>/<key>/``:

* ``meta.json`` — model fingerprint, method, parameters, data key, shapes (written atomically first);
* ``maps.npy`` — float32 (n, gh, gw) patch maps (a memmap: never loaded whole);
* ``target.npy`` — int64 (n,) the class each map explains; ``prob.npy`` — float32 (n,) its softmax probability;
* ``pred.npy`` — int64 (n,) the model's top-1 class;
* ``done.npy`` — uint8 (n,), 1 once that image's row is flushed to disk.

A batch's rows are written and flushed before its ``done`` flags are set and flushed, so an interrupted
pass leaves only whole, flagged rows; the next call with the same key computes the unflagged rows only.
Ranks of a ``torchrun`` job write disjoint rows of the same files (one node, or a shared filesystem).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._files import atomic_path, write_text_atomically
from ..errors import InputError

FORMAT = "vit_explore.survey/1"
ARRAYS = {"maps": np.float32, "target": np.int64, "prob": np.float32, "pred": np.int64, "done": np.uint8}


def default_root() -> Path:
    """``$VIT_EXPLORE_CACHE/surveys`` or ``~/.cache/vit-explore/surveys``."""
    base = os.environ.get("VIT_EXPLORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vit-explore")
    return Path(base) / "surveys"


def weights_fingerprint(model: nn.Module) -> str:
    """A content hash of the model: its class, and every parameter's and buffer's name, dtype, shape
    and values (sha256; stable across processes and sessions, unlike ``capture.state.model_fingerprint``
    which keys in-memory caches by object identity)."""
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, t in model.state_dict(keep_vars=False).items():
        h.update(f"|{name}:{t.dtype}:{tuple(t.shape)}|".encode())
        a = t.detach().cpu().contiguous()
        if a.dtype == torch.bfloat16:
            a = a.view(torch.int16)
        h.update(a.numpy().tobytes())
    return h.hexdigest()[:32]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v).tolist()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def store_key(fields: dict[str, Any]) -> str:
    """The folder name of a store: a hash of its identifying fields (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(_jsonable(fields), sort_keys=True).encode()).hexdigest()[:20]


class MapStore:
    """One survey's arrays on disk (see the module docstring). Open with :meth:`open_or_create`."""

    def __init__(self, path: Path, meta: dict[str, Any], mode: Literal["r+", "r"] = "r+") -> None:
        self.path, self.meta = path, meta
        self.arrays = {k: np.load(path / f"{k}.npy", mmap_mode=mode) for k in ARRAYS}

    @classmethod
    def open_or_create(cls, root: str | os.PathLike[str], fields: dict[str, Any], n: int,
                       grid: tuple[int, int], create: bool = True) -> MapStore:
        """The store for ``fields`` under ``root``: reopened when it exists with the same fields, else
        created (all arrays at full size, ``done`` all 0) in a temporary folder renamed into place."""
        root = Path(root).expanduser()
        key = store_key(fields)
        path = root / key
        meta = {"format": FORMAT, "key": key, "n": int(n), "grid": [int(grid[0]), int(grid[1])],
                "fields": _jsonable(fields)}
        if (path / "meta.json").is_file():
            old = json.loads((path / "meta.json").read_text())
            if old.get("format") != FORMAT or old.get("fields") != meta["fields"] or old.get("n") != n \
                    or old.get("grid") != meta["grid"]:
                raise InputError(
                    f"the survey store {str(path)!r} holds a different survey (a hash collision or an edited "
                    "meta.json); delete that folder or give another store"
                )
            return cls(path, old)
        if not create:
            raise InputError(f"no survey store at {str(path)!r}")
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name, dt in ARRAYS.items():
                shape = (n, *grid) if name == "maps" else (n,)
                a = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt, shape=shape)
                a.flush()
                del a
            write_text_atomically(tmp / "meta.json", json.dumps(meta, indent=1))
            try:
                os.replace(tmp, path)
            except OSError:  # another process created it first: use theirs
                if not (path / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(path, meta)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> MapStore:
        """Reopen a store folder read-only (e.g. one the CLI wrote)."""
        path = Path(path).expanduser()
        if not (path / "meta.json").is_file():
            raise InputError(f"{str(path)!r} is not a survey store (no meta.json)")
        return cls(path, json.loads((path / "meta.json").read_text()), mode="r")

    def __len__(self) -> int:
        return int(self.meta["n"])

    @property
    def maps(self) -> np.ndarray:
        """float32 (n, gh, gw) memmap."""
        return self.arrays["maps"]

    def missing(self) -> np.ndarray:
        """Indices (ascending) of images whose row is not yet written."""
        return np.flatnonzero(np.asarray(self.arrays["done"]) == 0)

    def complete(self) -> bool:
        return bool(np.all(np.asarray(self.arrays["done"]) == 1))

    def write(self, idx: np.ndarray, maps: np.ndarray, target: np.ndarray, prob: np.ndarray,
              pred: np.ndarray) -> None:
        """Write rows ``idx`` and flush them, then flag them done and flush the flags."""
        idx = np.asarray(idx, dtype=np.int64)
        for name, v in (("maps", maps), ("target", target), ("prob", prob), ("pred", pred)):
            self.arrays[name][idx] = v
            self.arrays[name].flush()
        self.arrays["done"][idx] = 1
        self.arrays["done"].flush()

    def save_json(self, name: str, obj: Any) -> None:
        """An extra JSON file beside the arrays (written atomically)."""
        with atomic_path(self.path / name) as tmp:
            tmp.write_text(json.dumps(_jsonable(obj)), encoding="utf-8")
