"""The two clusterings behind backdoor detection: spectral (SpRAy) and 2-means on activations.

**Spectral analysis** (von Luxburg 2007, "A tutorial on spectral clustering", as SpRAy uses it):
a symmetric k-nearest-neighbour graph ``W = (A + A^T) / 2`` of the feature vectors, its
normalised Laplacian ``L = I - D^{-1/2} W D^{-1/2}`` and the smallest eigenvalues
``0 = l_1 <= l_2 <= ...``. A group of items linked to the rest by few edges makes ``l_2`` small
(zero for a separate component) while ``l_3`` stays large: the *eigengap* ``l_{k+1} - l_k`` is
largest after the number of well-separated groups. Clusters: k-means on the rows of the first
``k`` eigenvectors scaled to unit length (Ng, Jordan & Weiss 2002). ``gap_score = 1 - l_2 / l_next``
(``l_next``: ``l_3``, or the first eigenvalue above zero after it when several groups are apart)
is near 1 when one split of the items is much cleaner than any other.

**Activation clustering** (Chen et al. 2018, arXiv:1811.03728): reduce a class's penultimate
activations to a few dimensions (PCA by default; Chen et al. used ICA, which seeks heavy-tailed
directions and so tends to split off a few outliers of a clean class), split them with 2-means,
and look at the relative size of the smaller cluster and the silhouette score of the split.

    spec = spectral(features, n_neighbors=10)      # eigenvalues, k, labels (2 clusters)
    ac = two_means(activations, dims=10)           # labels, small_share, silhouette
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from xailab.core.errors import InputError


@dataclass(frozen=True)
class Spectral:
    """Spectral clustering of a similarity graph: eigenvalues, eigengap cluster count and a 2-way split."""

    eigenvalues: np.ndarray       # the smallest eigenvalues of the normalised Laplacian, ascending
    k: int                        # number of clusters by the largest eigengap (1 .. len - 1)
    gap_score: float              # 1 - l_2 / l_next: 1 = a separate group, 0 = none
    labels: np.ndarray            # [n] 2-cluster spectral clustering, 1 = the smaller cluster
    small_share: float            # share of items in the smaller cluster


@dataclass(frozen=True)
class TwoMeans:
    """A 2-means split: labels (1 = the smaller cluster), its share and its silhouette."""

    labels: np.ndarray            # [n] 1 = the smaller cluster
    small_share: float
    silhouette: float             # mean silhouette coefficient of the split, in [-1, 1]


def _small_is_one(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels, minlength=2)
    return (labels == int(np.argmin(counts))).astype(np.int64)


def knn_graph(features: np.ndarray, n_neighbors: int) -> scipy.sparse.csr_matrix:
    """Symmetric connectivity ``(A + A^T) / 2`` of the ``n_neighbors`` nearest neighbours."""
    from sklearn.neighbors import kneighbors_graph

    a = kneighbors_graph(features, n_neighbors=n_neighbors, include_self=False)
    return scipy.sparse.csr_matrix(0.5 * (a + a.T))


def laplacian_spectrum(w: scipy.sparse.csr_matrix, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(eigenvalues [m], eigenvectors [n, m], D^{-1/2})`` of the normalised Laplacian, smallest first."""
    n = w.shape[0]
    deg = np.asarray(w.sum(axis=1)).ravel()
    dinv = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    s = scipy.sparse.diags(dinv) @ w @ scipy.sparse.diags(dinv)  # normalised adjacency
    if n <= 3000:
        vals, vecs = scipy.linalg.eigh(s.toarray(), subset_by_index=[n - m, n - 1])
    else:
        vals, vecs = scipy.sparse.linalg.eigsh(s, k=m, which="LA", v0=np.ones(n) / np.sqrt(n))
    order = np.argsort(-vals)
    lap = np.clip(1.0 - vals[order], 0.0, 2.0)
    return lap, vecs[:, order], dinv


def spectral(features: np.ndarray, *, n_neighbors: int = 10, n_eigen: int = 10, seed: int = 0) -> Spectral:
    """Eigengap analysis and 2-cluster spectral clustering of ``features [n, d]``."""
    from sklearn.cluster import KMeans

    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n < 4:
        raise InputError(f"spectral analysis needs at least 4 items, got {n}")
    k_nn = max(2, min(n_neighbors, n - 1))
    m = max(3, min(n_eigen, n - 1))
    w = knn_graph(x, k_nn)
    lap, vecs, _ = laplacian_spectrum(w, m)
    gaps = np.diff(lap)
    k = int(np.argmax(gaps)) + 1
    above = lap[2:][lap[2:] > 1e-6]  # l_3, or the first eigenvalue above zero after it
    gap_score = float(1.0 - lap[1] / above[0]) if len(above) else 0.0
    emb = vecs[:, :2] / np.maximum(np.linalg.norm(vecs[:, :2], axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(emb)
    labels = _small_is_one(labels)
    return Spectral(lap, k, gap_score, labels, float(labels.mean()))


def two_means(activations: np.ndarray, *, dims: int = 10, reduce: str = "pca", seed: int = 0) -> TwoMeans:
    """Chen et al.'s activation clustering of one class: reduce, 2-means, size and silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA
    from sklearn.metrics import silhouette_score

    a = np.asarray(activations, dtype=np.float64)
    if len(a) < 4:
        raise InputError(f"activation clustering needs at least 4 items, got {len(a)}")
    if reduce not in ("ica", "pca", "none"):
        raise InputError(f"reduce must be 'ica', 'pca' or 'none', not {reduce!r}")
    # never ask for more components than the activations have directions (dead ReLUs, few items)
    sv = np.linalg.svd(a - a.mean(axis=0), compute_uv=False)
    rank = int((sv > 1e-6 * max(float(sv[0]), 1e-30)).sum()) if len(sv) else 0
    d = max(1, min(dims, rank, len(a) - 1))
    z = None
    if reduce == "ica":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FastICA's convergence warnings on near-degenerate classes
            try:
                z = FastICA(n_components=d, random_state=seed, max_iter=400, whiten="unit-variance").fit_transform(a)
            except ValueError:
                z = None
        if z is not None and not np.isfinite(z).all():
            z = None
        if z is None:  # ICA failed on degenerate activations: PCA gives the same subspace
            z = PCA(n_components=d, random_state=seed).fit_transform(a)
    elif reduce == "pca":
        z = PCA(n_components=d, random_state=seed).fit_transform(a)
    else:
        z = a
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(z)
    labels = _small_is_one(labels)
    sil = float(silhouette_score(z, labels)) if 0 < labels.sum() < len(labels) else 0.0
    return TwoMeans(labels, float(labels.mean()), sil)
