"""``vx.survey`` (explain a whole dataset into an on-disk store) and ``Survey`` (SpRAy per class, the causal check)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from . import spray
from .confirm import flips, summary
from .data import Source, as_source
from .store import MapStore, default_root, weights_fingerprint


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def survey(
    model: nn.Module,
    data: Any,
    method: str = "chefer_lrp",
    labels: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 32,
    store: str | os.PathLike[str] | None = None,
    *,
    progress: bool | Callable[[int], None] = True,
    n_neighbors: int = 10,
    max_k: int = 8,
    downsample: int = 1,
    clustering: str = "spectral",
    embedding: str = "auto",
    seed: int = 0,
    norm: str = "auto",
    **params: Any,
) -> Survey:
    """Explain every image of a dataset and prepare SpRAy per class (Lapuschkin et al. 2019).

    Args:
        model: a timm ViT (left unchanged; inputs go to its device).
        data: a list of images (PIL, uint8 (H, W, 3) arrays or (3, H, W) tensors), a uint8
            (N, H, W, 3) array, a float (N, 3, H, W) tensor of model inputs, a torch ``Dataset``
            (items ``image`` or ``(image, label)``), an image folder, a ``ShapesData`` or a preset name
            (``"shapes-spurious"``, ``"shapes-spurious:2000"``).
        method: a key of ``vx.list_methods()``; ``**params`` are its parameters.
        labels: (N,) class per image: group and explain by these instead of the predicted class.
        batch_size: images explained per call.
        store: the folder that holds survey stores (default ``~/.cache/vit-explore/surveys`` or
            ``$VIT_EXPLORE_CACHE/surveys``); each survey gets a sub-folder keyed by the model's weights,
            the method and its parameters, the data and the labels, and is reused or resumed by later calls.
        progress: a tqdm bar (True), none (False), or ``f(n_images_done)`` called after each batch.
        n_neighbors, max_k, downsample, clustering, embedding, seed: SpRAy settings (``spray.analyse``).
        norm: how each map is scaled before SpRAy and in the mean maps: ``"max"``, ``"sum"``, ``"none"``
            (``spray.normalise``), or ``"auto"``: ``"none"`` for maps in one absolute unit across images
            (occlusion's probability drops, whose size says how much an image relies on a patch), else
            ``"max"`` (``spray.auto_norm``).

    Returns:
        A :class:`Survey`. Under ``torchrun`` (an initialised process group) each rank explains every
        world-th batch of the missing images into the shared store; every rank returns the full survey.
    """
    from .._version import __version__
    from ..capture.adapters import inspect_vit
    from ..explainers import get_explainer

    spec = get_explainer(method)
    bound = spec.bind(params)
    if norm != "auto" and norm not in spray.NORMS:
        raise InputError(f"unknown normalisation {norm!r}; use 'auto' or one of {spray.NORMS}")
    info = inspect_vit(model)
    src = as_source(model, data)
    n = len(src)
    if n == 0:
        raise InputError("the dataset is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    lab = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
            raise InputError(f"labels must be {n} integers (one per image), got {lab.dtype} {lab.shape}")
        lab = lab.astype(np.int64)
        C = info.num_classes
        if C and (lab.min() < 0 or lab.max() >= C):
            raise InputError(f"labels must lie in 0..{C - 1} (the model's classes), got {lab.min()}..{lab.max()}")
    first = src.batch([0])
    ph, pw = info.patch_size
    grid = (int(first.shape[-2]) // ph, int(first.shape[-1]) // pw)
    fields = {
        "version": __version__, "model": weights_fingerprint(model), "method": method, "params": bound,
        "data": src.key(), "labels": "pred" if lab is None else hashlib.sha256(lab.tobytes()).hexdigest()[:24],
    }
    root = default_root() if store is None else store
    rank, world = _dist()
    if rank == 0:
        ms = MapStore.open_or_create(root, fields, n, grid)
    _barrier(world)
    if rank != 0:
        ms = MapStore.open_or_create(root, fields, n, grid, create=False)
    todo = ms.missing()
    _barrier(world)  # every rank has read the same missing set before anyone writes
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    _explain_into(model, src, ms, batches[rank::world], method, bound, lab, progress if rank == 0 else False, n)
    _barrier(world)
    if not ms.complete():
        raise RuntimeError(f"the survey store {str(ms.path)!r} is incomplete after the pass; run survey() again")
    return Survey(ms, model=model, source=src, labels=lab, method=method, params=bound,
                  spray_params={"n_neighbors": n_neighbors, "max_k": max_k, "downsample": downsample,
                                "clustering": clustering, "embedding": embedding, "seed": seed,
                                "norm": norm})


def _explain_into(model, src: Source, ms: MapStore, batches, method, bound, lab, progress, n) -> None:
    from ..api import explain

    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - sum(len(b) for b in batches) if batches else n,
                   desc=f"survey {method}", unit="img")
    dev = _device(model)
    try:
        for idx in batches:
            x = src.batch(idx).to(dev)
            tgt = None if lab is None else torch.as_tensor(lab[idx], device=dev)
            ex = explain(model, x, method, target=tgt, **bound)
            probs = ex.logits.detach().float().softmax(-1)
            t = ex.target.detach().to(probs.device).long().reshape(-1)
            ms.write(idx, ex.patch_map.detach().float().cpu().numpy(), t.cpu().numpy(),
                     probs.gather(1, t[:, None])[:, 0].cpu().numpy(), probs.argmax(-1).cpu().numpy())
            if bar is not None:
                bar.update(len(idx))
            elif callable(progress):
                progress(len(idx))
    finally:
        if bar is not None:
            bar.close()


class Survey:
    """A dataset's explanations grouped by class, with SpRAy per class (computed on first use).

    All results are numpy. ``c`` is a class index, ``k`` a cluster of that class (0 = the largest)
    at the eigengap-suggested number of clusters. The model and data are kept (in memory, by
    reference) for :meth:`confirm` and the Atlas; a survey reopened from a store folder alone can
    show but not confirm.
    """

    def __init__(self, store: MapStore, *, model: nn.Module | None = None, source: Source | None = None,
                 labels: np.ndarray | None = None, method: str = "", params: dict | None = None,
                 spray_params: dict | None = None) -> None:
        self.store, self.model, self.source = store, model, source
        self.method, self.params = method, dict(params or {})
        self.spray_params = dict(spray_params or {})
        if self.spray_params.get("norm", "auto") == "auto":  # resolved once: analyse and the mean maps agree
            self.spray_params["norm"] = spray.auto_norm(method, self.params)
        self._target = np.asarray(store.arrays["target"]).astype(np.int64)
        self.given_labels = labels
        self._analysis: dict[int, spray.ClassAnalysis] = {}
        self._means: dict[tuple[int, int | None], np.ndarray] = {}  # (class, cluster or None) -> mean map

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None, data: Any = None,
             **spray_params: Any) -> Survey:
        """Reopen a store folder (e.g. written by ``vit-explore survey``); give the model and data to confirm."""
        ms = MapStore.open(path)
        src = None if data is None or model is None else as_source(model, data)
        f = ms.meta["fields"]
        return cls(ms, model=model, source=src, method=f["method"], params=f["params"], spray_params=spray_params)

    # ------------------------------------------------------------------ per-image arrays

    def __len__(self) -> int:
        return len(self.store)

    @property
    def grid(self) -> tuple[int, int]:
        gh, gw = self.store.meta["grid"]
        return int(gh), int(gw)

    @property
    def targets(self) -> np.ndarray:
        """(N,) int64: the class each image was explained for and is grouped by."""
        return self._target

    @property
    def predictions(self) -> np.ndarray:
        """(N,) int64: the model's top-1 class per image."""
        return np.asarray(self.store.arrays["pred"]).astype(np.int64)

    def map(self, i: int) -> np.ndarray:
        """(gh, gw) float32 map of dataset image ``i``."""
        return np.array(self.store.maps[int(i)], dtype=np.float32)

    # ------------------------------------------------------------------ SpRAy

    @property
    def classes(self) -> np.ndarray:
        """(n_classes,) int64: the classes with at least one image, ascending."""
        return np.unique(self._target)

    def _check_class(self, c: int) -> int:
        c = int(c)
        if c not in set(self.classes.tolist()):
            raise InputError(f"class {c} has no images in this survey; classes: {self.classes.tolist()}")
        return c

    def indices(self, c: int) -> np.ndarray:
        """(n_c,) int64 dataset indices of the images of class ``c``, ascending."""
        return np.flatnonzero(self._target == self._check_class(c))

    def analysis(self, c: int) -> spray.ClassAnalysis:
        """SpRAy's full result for class ``c`` (cached)."""
        c = self._check_class(c)
        if c not in self._analysis:
            maps = np.asarray(self.store.maps[self.indices(c)], dtype=np.float32)
            self._analysis[c] = spray.analyse(maps, **self.spray_params)
        return self._analysis[c]

    def clusters(self, c: int) -> np.ndarray:
        """(n_c,) int64 cluster of each image of ``indices(c)`` (0 = the largest cluster)."""
        return self.analysis(c).labels

    def n_clusters(self, c: int) -> int:
        """The eigengap-suggested number of clusters of class ``c``."""
        return int(self.analysis(c).suggested_k)

    def eigengap(self, c: int) -> np.ndarray:
        """(m-1,) gaps between consecutive Laplacian eigenvalues; entry k-1 follows k clusters."""
        return self.analysis(c).eigengap

    def eigenvalues(self, c: int) -> np.ndarray:
        """(m,) smallest eigenvalues of the class's normalised kNN-graph Laplacian, ascending."""
        return self.analysis(c).eigenvalues

    def members(self, c: int, k: int) -> np.ndarray:
        """(n_ck,) dataset indices of cluster ``k`` of class ``c``."""
        lab = self.clusters(c)
        if not 0 <= int(k) < self.n_clusters(c):
            raise InputError(f"class {c} has clusters 0..{self.n_clusters(c) - 1}, not {k}")
        return self.indices(c)[lab == int(k)]

    @property
    def norm(self) -> str:
        """How each map is scaled before SpRAy and in the mean maps (``spray.normalise``)."""
        return str(self.spray_params["norm"])

    def mean_map(self, c: int, k: int) -> np.ndarray:
        """(gh, gw) float64 mean of the members' maps, each scaled as SpRAy's features (:attr:`norm`)."""
        return self._mean(int(c), int(k), self.members(c, k))

    def class_mean_map(self, c: int) -> np.ndarray:
        """(gh, gw) float64 mean of every class-``c`` image's map, each scaled as SpRAy's features (:attr:`norm`)."""
        return self._mean(int(c), None, self.indices(c))

    def _mean(self, c: int, k: int | None, idx: np.ndarray) -> np.ndarray:
        """The normalised mean of the maps ``idx``, read from the store once per (class, cluster): the
        Atlas's cards, ``contrast_map``, ``hot_patches`` and ``scan`` ask for the same means repeatedly."""
        if (c, k) not in self._means:
            m = spray.normalise(np.asarray(self.store.maps[idx], dtype=np.float32), norm=self.norm)
            self._means[(c, k)] = m.mean(axis=0).reshape(self.grid)
        return self._means[(c, k)].copy()

    def contrast_map(self, c: int, k: int) -> np.ndarray:
        """(gh, gw) float64 ``mean_map(c, k) - class_mean_map(c)``: where cluster ``k`` looks more (> 0)
        or less (< 0) than its class as a whole. A shortcut that only part of a class uses shows here
        even where the object holds most of every member's relevance."""
        return self.mean_map(c, k) - self.class_mean_map(c)

    def hot_patches(self, c: int, k: int, mass: float = 0.5, contrast: bool = False) -> np.ndarray:
        """(gh, gw) bool: the fewest patches holding ``mass`` of the positive mass of the cluster's mean
        map, or with ``contrast=True`` of its :meth:`contrast_map` (what sets the cluster apart)."""
        return spray.hot_mask(self.contrast_map(c, k) if contrast else self.mean_map(c, k), mass)

    def embedding(self, c: int) -> np.ndarray:
        """(n_c, 2) float32 display coordinates of ``indices(c)`` (t-SNE, or UMAP when installed)."""
        return self.analysis(c).embedding

    def outlier_scores(self, c: int) -> np.ndarray:
        """(n_c,) mean distance of each image's normalised map to its nearest neighbours'."""
        return self.analysis(c).outlier_score

    def outliers(self, c: int) -> np.ndarray:
        """Dataset indices of class ``c`` whose outlier score exceeds Q3 + 1.5 IQR, most unusual first."""
        s = self.outlier_scores(c)
        if len(s) < 4:
            return np.zeros(0, dtype=np.int64)
        q1, q3 = np.percentile(s, [25, 75])
        pick = np.flatnonzero(s > q3 + 1.5 * (q3 - q1))
        return self.indices(c)[pick[np.argsort(-s[pick], kind="stable")]]

    # ------------------------------------------------------------------ the causal check

    def _grid_mask(self, patches: Any) -> np.ndarray:
        gh, gw = self.grid
        a = np.asarray(patches)
        if a.dtype == bool:
            if a.shape != (gh, gw):
                raise InputError(f"a patch mask must be a ({gh}, {gw}) bool grid, got {a.shape}")
            return a.copy()
        flat = a.astype(np.int64).ravel()
        if flat.size == 0 or flat.min() < 0 or flat.max() >= gh * gw:
            raise InputError(f"patch indices must lie in 0..{gh * gw - 1} (row-major), got {flat.tolist()[:8]}")
        out = np.zeros(gh * gw, dtype=bool)
        out[flat] = True
        return out.reshape(gh, gw)

    def confirm(self, c: int, k: int, patches: Any = None, mode: str = "mean", batch_size: int = 64,
                mass: float = 0.5, contrast: bool = False) -> dict[str, Any]:
        """Test a cluster's hypothesis causally with ``vx.intervene``.

        ``patches`` (default: ``hot_patches(c, k, mass, contrast)``; a (gh, gw) bool grid or row-major indices)
        are replaced (``mode``, see ``vx.intervene``) in every member of cluster ``k``; the control
        replaces as many patches, the coldest of the cluster's mean map outside ``patches``, in the
        same images. The same two sets are applied to the rest of the class.

        Returns:
            ``flip_rate`` (share of members whose top-1 class changes), ``delta_p`` (mean change of
            the probability of the explained class), ``control_flip_rate``, ``control_delta_p``, each with
            a 95% interval (``*_ci``: Wilson for rates, Student t for means), the same four with a
            ``rest_`` prefix for the other images of the class, ``n``, ``n_rest``, ``patches`` and
            ``control_patches`` ((gh, gw) bool).
        """
        if self.model is None or self.source is None:
            raise InputError("this Survey has no model or data attached; reopen it with Survey.load(path, model, data)")
        hot = self.hot_patches(c, k, mass, contrast) if patches is None else self._grid_mask(patches)
        size = int(hot.sum())
        if size == 0:
            raise InputError(f"cluster {k} of class {c} has no positive mean-map mass: no hot patches to test")
        if size == hot.size:
            raise InputError("the patch set covers every patch: no control set of the same size is left")
        mm = self.mean_map(c, k)
        cold = spray.cold_mask(np.where(hot, np.inf, mm), size)
        mem = self.members(c, k)
        rest = np.setdiff1d(self.indices(c), mem)
        dev = _device(self.model)
        out: dict[str, Any] = {"class": int(c), "cluster": int(k), "mode": mode,
                               "patches": hot, "control_patches": cold}
        for prefix, idx in (("", mem), ("rest_", rest)):
            t = self._target[idx]
            for tag, grid in (("", hot), ("control_", cold)):
                f, d = flips(self.model, self.source.batch, idx, grid, t, mode, batch_size, dev)
                s = summary(f, d)
                out[f"{prefix}n"] = s["n"]
                for key in ("flip_rate", "flip_rate_ci", "delta_p", "delta_p_ci"):
                    out[f"{prefix}{tag}{key}"] = s[key]
        return out

    def scan(self, mode: str = "mean", mass: float = 0.5, contrast: bool = True, batch_size: int = 64,
             classes: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Confirm every suggested cluster of every class (or of ``classes``): the search for a shortcut
        without knowing where it is. Each cluster's hot patches (by default of its :meth:`contrast_map`)
        are removed from its members, against the same number of its coldest patches as the control.

        Returns:
            One :meth:`confirm` result per cluster, most telling first: sorted by ``flip_rate -
            control_flip_rate`` (descending), then by class and cluster. Clusters with no positive mass
            to test are left out.
        """
        rows: list[dict[str, Any]] = []
        for c in (self.classes if classes is None else classes):
            c = self._check_class(int(c))
            for k in range(self.n_clusters(c)):
                if not self.hot_patches(c, k, mass, contrast).any():
                    continue
                rows.append(self.confirm(c, k, mode=mode, batch_size=batch_size, mass=mass, contrast=contrast))
        rows.sort(key=lambda r: (-(r["flip_rate"] - r["control_flip_rate"]), r["class"], r["cluster"]))
        return rows
