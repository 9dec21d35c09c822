"""2-D maps of embeddings (PCA, t-SNE or UMAP) and their scatter plots as PNG.

Part of the embedding audit (:func:`cxr_embed.evaluate.audit.audit_embeddings`). PCA is the
default: deterministic, about two seconds for 5,000 x 1,280 on two cores, and a linear view,
which is what a linear classifier on the embeddings sees. UMAP needs the optional extra
(``pip install 'cxr_embed[audit]'``; its first call JIT-compiles for minutes); t-SNE comes with
scikit-learn. Plots use a :class:`matplotlib.figure.Figure` without pyplot, like
:mod:`cxr_embed.evaluate.report`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from ..exceptions import InvalidInputError
from .._utils import require

__all__ = ["MAP_METHODS", "embedding_map", "plot_map"]

logger = logging.getLogger(__name__)

MAP_METHODS = ("auto", "pca", "tsne", "umap")
_MAX_LEGEND = 12


def embedding_map(X: ArrayLike, *, method: str = "pca", random_state: int | None = 0) -> tuple[np.ndarray, str]:
    """Project embeddings to two dimensions.

    Parameters
    ----------
    X : array-like of shape (n_images, dim)
    method : {"pca", "tsne", "umap", "auto"}, default "pca"
        ``"tsne"`` and ``"umap"`` run on the first 50 principal components; ``"auto"`` is
        UMAP when umap-learn is installed, else PCA.
    random_state : int or None, default 0

    Returns
    -------
    coords : ndarray of shape (n_images, 2)
    method : str
        The method used (``"auto"`` resolved).

    Raises
    ------
    MissingDependencyError
        ``method="umap"`` without umap-learn (install hint: the ``audit`` extra).

    Examples
    --------
    >>> import numpy as np
    >>> xy, used = embedding_map(np.random.default_rng(0).normal(size=(40, 8)))
    >>> xy.shape, used
    ((40, 2), 'pca')
    """
    from sklearn.decomposition import PCA

    if method not in MAP_METHODS:
        raise InvalidInputError(f"method must be one of {MAP_METHODS}; got {method!r}")
    X = np.asarray(X, dtype=np.float32)
    if method == "auto":
        import importlib.util

        method = "umap" if importlib.util.find_spec("umap") is not None else "pca"
    n_comp = min(50 if method != "pca" else 2, X.shape[0], X.shape[1])
    Z = PCA(n_components=n_comp, random_state=random_state).fit_transform(X - X.mean(axis=0))
    if method == "pca":
        if Z.shape[1] < 2:
            Z = np.column_stack([Z, np.zeros((Z.shape[0], 2 - Z.shape[1]))])
        return Z[:, :2].astype(float), "pca"
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (X.shape[0] - 1) / 3.0)))
        return TSNE(2, init="pca", perplexity=perplexity, random_state=random_state).fit_transform(Z), "tsne"
    umap = require("umap", extra="audit", package="umap-learn")
    n_neighbors = int(min(15, max(2, X.shape[0] - 1)))
    return umap.UMAP(n_neighbors=n_neighbors, random_state=random_state).fit_transform(Z).astype(float), "umap"


def plot_map(coords: ArrayLike, values: ArrayLike, *, title: str = "", path: str | os.PathLike | None = None):
    """Scatter plot of a 2-D map coloured by one categorical column.

    Parameters
    ----------
    coords : array-like of shape (n_images, 2)
    values : array-like of shape (n_images,)
        Category per point; the 12 most frequent get their own colour, the rest are "other".
    title : str
    path : str or Path, optional
        Where to save the PNG.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_map([[0, 0], [1, 1], [2, 0]], ["AP", "PA", "AP"], title="view")
    >>> fig.axes[0].get_title()
    'view'
    """
    from .figures import _figure, _save

    xy = np.asarray(coords, dtype=float)
    v = np.asarray(values, dtype=object).astype(str)
    levels, counts = np.unique(v, return_counts=True)
    keep = list(levels[np.argsort(-counts, kind="stable")][:_MAX_LEGEND])
    v = np.where(np.isin(v, keep), v, "other")
    if "other" in v and "other" not in keep:
        keep.append("other")
    fig = _figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    size = float(np.clip(20000.0 / max(len(v), 1), 3.0, 30.0))
    for i, level in enumerate(sorted(keep)):
        m = v == level
        ax.scatter(xy[m, 0], xy[m, 1], s=size, alpha=0.6, linewidths=0, color=f"C{i % 10}",
                   label=f"{level} ({int(m.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small", markerscale=max(1.0, 12.0 / size))
    _save(fig, Path(path) if path is not None else None)
    return fig
