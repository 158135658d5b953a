"""Spectral Relevance Analysis (SpRAy) of one class's patch maps.

Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really learn",
Nature Communications 10:1096 (2019); the pipeline as in CoRelAy (Anders et al., "Software for
Dataset-wide XAI", 2021): normalise, optionally downsample, k-nearest-neighbour affinity, spectral
embedding with the eigengap heuristic for the number of clusters, clustering, a 2-D embedding for
display. Pure numpy / scipy / scikit-learn over an (n, gh, gw) array.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

CLUSTERINGS = ("spectral", "kmeans", "agglomerative")
NORMS = ("max", "sum", "none")
# Methods whose maps share one absolute unit across images (a change of the class probability), keyed
# by the parameter that must hold for it: rescaling them would discard how much each image relies on a region.
ABSOLUTE_UNITS = {"occlusion": ("score", "prob")}


def auto_norm(method: str, params: dict) -> str:
    """The normalisation ``norm="auto"`` picks for a method and its bound parameters (defaults
    filled): ``"none"`` for maps already in one absolute unit for every image (occlusion with
    ``score="prob"``: the drop of the class probability, in [-1, 1]), else ``"max"`` (relevance maps
    scale with the logit, so SpRAy compares their shapes)."""
    rule = ABSOLUTE_UNITS.get(method)
    if rule is not None and params.get(rule[0]) == rule[1]:
        return "none"
    return "max"


@dataclass
class ClassAnalysis:
    """SpRAy's result for one class of n images.

    Attributes:
        features: (n, d) float64 normalised (and downsampled) maps, one row per image.
        eigenvalues: (m,) ascending eigenvalues of the normalised graph Laplacian (m <= max_k + 1).
        eigenvectors: (n, m) the matching eigenvectors (the spectral embedding).
        suggested_k: the number of clusters with the largest eigengap, in [2, max_k].
        labels: (n,) int cluster of each image at ``suggested_k``.
        embedding: (n, 2) float32 display embedding (t-SNE, or UMAP when installed and asked for).
        outlier_score: (n,) mean distance to the image's nearest neighbours in feature space.
    """

    features: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    suggested_k: int
    labels: np.ndarray
    embedding: np.ndarray
    outlier_score: np.ndarray
    method: str = "spectral"
    seed: int = 0
    _by_k: dict = field(default_factory=dict, repr=False)

    @property
    def eigengap(self) -> np.ndarray:
        """(m-1,) ``eigenvalues[i+1] - eigenvalues[i]``; entry ``k-1`` is the gap after k clusters."""
        return np.diff(self.eigenvalues)

    def labels_for(self, k: int) -> np.ndarray:
        """(n,) cluster labels with exactly ``k`` clusters (cached)."""
        if k == self.suggested_k:
            return self.labels
        if k not in self._by_k:
            self._by_k[k] = cluster(self.features, self.eigenvectors, k, self.method, self.seed)
        return self._by_k[k]


def normalise(maps: np.ndarray, downsample: int = 1, norm: str = "max") -> np.ndarray:
    """(n, gh, gw) maps -> (n, d) float64 features, then average-pooled by ``downsample`` (gh, gw divisible).

    ``norm``: ``"max"`` divides each map by its largest absolute value (SpRAy compares shapes, not
    scales); ``"sum"`` by the sum of its absolute values (CoRelAy's ``Normalize``, which divides by the
    sum, made safe for signed maps); ``"none"`` keeps the values, for maps already in one unit across
    images (occlusion's probability drops), whose size is the evidence.
    """
    if norm not in NORMS:
        raise InputError(f"unknown normalisation {norm!r}; use one of {NORMS}")
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise InputError(f"maps must be (n, gh, gw), got shape {m.shape}")
    if norm != "none":
        a = np.abs(m).reshape(len(m), -1)
        scale = a.max(axis=1) if norm == "max" else a.sum(axis=1)
        m = m / np.where(scale > 0, scale, 1.0)[:, None, None]
    if downsample > 1:
        n, gh, gw = m.shape
        if gh % downsample or gw % downsample:
            raise InputError(f"downsample={downsample} does not divide the map grid {(gh, gw)}")
        m = m.reshape(n, gh // downsample, downsample, gw // downsample, downsample).mean(axis=(2, 4))
    return m.reshape(len(m), -1)


def knn_affinity(X: np.ndarray, n_neighbors: int):
    """Symmetric kNN connectivity (scipy CSR, n x n): ``(A + A.T) / 2`` of the 0/1 graph joining each
    row to its ``n_neighbors`` nearest others (Euclidean)."""
    from sklearn.neighbors import kneighbors_graph

    k = max(1, min(int(n_neighbors), len(X) - 1))
    A = kneighbors_graph(X, k, mode="connectivity", include_self=False)
    return ((A + A.T) * 0.5).tocsr()


def spectral(A, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` smallest eigenvalues (ascending) and eigenvectors of the symmetric normalised
    Laplacian ``I - D^-1/2 A D^-1/2`` (Ng, Jordan & Weiss 2001; von Luxburg 2007 for the eigengap)."""
    import scipy.sparse as sp
    from scipy.linalg import eigh
    from scipy.sparse.linalg import eigsh

    n = A.shape[0]
    d = np.asarray(A.sum(axis=1)).ravel()
    inv = 1.0 / np.sqrt(np.where(d > 0, d, 1.0))
    M = sp.diags(inv) @ A @ sp.diags(inv)
    m = min(m, n)
    if n <= 1500 or m >= n - 1:
        w, v = eigh(M.toarray())
        w, v = w[::-1][:m], v[:, ::-1][:, :m]
    else:
        rng = np.random.default_rng(0)
        w, v = eigsh(M, k=m, which="LA", v0=rng.standard_normal(n), tol=1e-8)
        order = np.argsort(w)[::-1]
        w, v = w[order], v[:, order]
    return 1.0 - w, v


def cluster(X: np.ndarray, V: np.ndarray, k: int, method: str = "spectral", seed: int = 0) -> np.ndarray:
    """(n,) labels in 0..k-1, numbered by decreasing cluster size.

    ``spectral``: k-means on the row-normalised first k eigenvectors (Ng, Jordan & Weiss);
    ``kmeans``: k-means on the features; ``agglomerative``: Ward linkage on the features.
    """
    from sklearn.cluster import AgglomerativeClustering, KMeans

    if method not in CLUSTERINGS:
        raise InputError(f"unknown clustering {method!r}; use one of {CLUSTERINGS}")
    n = len(X)
    if k < 1 or k > n:
        raise InputError(f"cannot make {k} clusters of {n} images")
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    if method == "spectral":
        U = V[:, :k]
        U = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
        lab = KMeans(k, n_init=10, random_state=seed).fit_predict(U)
    elif method == "kmeans":
        lab = KMeans(k, n_init=10, random_state=seed).fit_predict(X)
    else:
        lab = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(X)
    sizes = np.bincount(lab, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return rank[lab]


def embed_2d(X: np.ndarray, seed: int = 0, kind: str = "auto") -> np.ndarray:
    """(n, 2) float32 display coordinates: UMAP when ``kind`` is ``"umap"`` or ``"auto"`` and umap-learn is
    installed, else t-SNE (scikit-learn, PCA initialisation, perplexity min(30, (n-1)/3))."""
    n = len(X)
    if n < 4:
        return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)])
    if kind in ("auto", "umap"):
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError:
            if kind == "umap":
                raise InputError("embedding='umap' needs umap-learn: pip install umap-learn") from None
        else:
            return umap.UMAP(random_state=seed, n_neighbors=min(15, n - 1)).fit_transform(X).astype(np.float32)
    if kind not in ("auto", "umap", "tsne"):
        raise InputError(f"unknown embedding {kind!r}; use 'tsne', 'umap' or 'auto'")
    from sklearn.manifold import TSNE

    perp = float(min(30.0, (n - 1) / 3.0))
    return TSNE(2, perplexity=perp, init="pca", random_state=seed).fit_transform(X).astype(np.float32)


def analyse(
    maps: np.ndarray,
    *,
    n_neighbors: int = 10,
    max_k: int = 8,
    downsample: int = 1,
    clustering: str = "spectral",
    embedding: str = "auto",
    seed: int = 0,
    norm: str = "max",
) -> ClassAnalysis:
    """SpRAy on one class: (n, gh, gw) maps -> :class:`ClassAnalysis` (see the module docstring).

    ``n_neighbors``: kNN affinity size; ``max_k``: the largest number of clusters the eigengap may
    suggest (at least 2 are always made when n >= 2); ``clustering``: one of ``CLUSTERINGS``;
    ``norm``: one of ``NORMS`` (see :func:`normalise`).
    """
    if clustering not in CLUSTERINGS:
        raise InputError(f"unknown clustering {clustering!r}; use one of {CLUSTERINGS}")
    X = normalise(maps, downsample, norm)
    n = len(X)
    if n < 2:
        z = np.zeros((n, 0))
        return ClassAnalysis(X, np.zeros(0), z, 1, np.zeros(n, np.int64), embed_2d(X, seed, embedding),
                             np.zeros(n), clustering, seed)
    A = knn_affinity(X, n_neighbors)
    w, V = spectral(A, max(2, max_k) + 1)
    gaps = np.diff(w)
    hi = min(max_k, n, len(gaps))
    k = 2 + int(np.argmax(gaps[1:hi])) if hi >= 2 else min(2, n)
    labels = cluster(X, V, k, clustering, seed)
    from sklearn.neighbors import NearestNeighbors

    nn_ = NearestNeighbors(n_neighbors=min(n_neighbors, n - 1) + 1).fit(X)
    dist, _ = nn_.kneighbors(X)
    score = dist[:, 1:].mean(axis=1)
    return ClassAnalysis(X, w, V, k, labels, embed_2d(X, seed, embedding), score, clustering, seed)


def hot_mask(mean_map: np.ndarray, mass: float = 0.5) -> np.ndarray:
    """(gh, gw) bool: the fewest highest cells of ``mean_map`` whose positive values hold at least
    ``mass`` of its total positive mass (all False when nothing is positive)."""
    if not 0.0 < mass <= 1.0:
        raise InputError(f"mass must be in (0, 1], got {mass}")
    v = np.clip(np.asarray(mean_map, dtype=np.float64), 0.0, None).ravel()
    total = v.sum()
    out = np.zeros(v.shape, dtype=bool)
    if total <= 0:
        return out.reshape(np.shape(mean_map))
    order = np.argsort(-v, kind="stable")
    cum = np.cumsum(v[order])
    count = int(np.searchsorted(cum, mass * total * (1 - 1e-12))) + 1
    out[order[:count]] = True
    return out.reshape(np.shape(mean_map))


def cold_mask(mean_map: np.ndarray, size: int) -> np.ndarray:
    """(gh, gw) bool: the ``size`` cells with the lowest values of ``mean_map`` (the control region)."""
    v = np.asarray(mean_map, dtype=np.float64).ravel()
    out = np.zeros(v.shape, dtype=bool)
    out[np.argsort(v, kind="stable")[: int(size)]] = True
    return out.reshape(np.shape(mean_map))
