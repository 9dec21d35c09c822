"""Classifier search and grouped cross-validation on a Ray cluster, through joblib's Ray backend.

Everything in :mod:`cxr_embed.learn` that takes ``n_jobs`` (grouped CV, nested CV, external
validation, learning curves, the ``search=`` estimators of
:func:`~cxr_embed.learn.classifiers.make_classifier`) runs its work through joblib. Inside
:func:`ray_backend`, that work goes to the Ray cluster instead of local processes: the folds
are still drawn on the driver (same seeds, same folds), each fit runs on a cluster CPU, and
the results come back in order, so out-of-fold predictions are those of ``n_jobs=1`` (on
machines with the same CPU and math libraries).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from .._ray import ray_session

__all__ = ["ray_backend"]


@contextlib.contextmanager
def ray_backend(address: str | None = None, *, n_jobs: int = -1, init_kwargs: dict | None = None) -> Iterator[None]:
    """Run joblib work (``n_jobs`` of cxr_embed and scikit-learn) on a Ray cluster.

    Registers Ray's joblib backend (``ray.util.joblib.register_ray``) and makes it the
    default inside the ``with`` block (``joblib.parallel_config(backend="ray")``). Calls
    that leave ``n_jobs=None`` use ``n_jobs`` below; an explicit ``n_jobs=1`` still runs in
    this process.

    Parameters
    ----------
    address : str, optional
        Ray cluster address (``"auto"``, ``"HOST:6379"``). ``None``: this process's Ray
        session, or a new local instance sized to this machine. A session this function
        started or connected is shut down when the block ends.
    n_jobs : int, default -1
        Parallel jobs for calls that do not set their own (-1: every CPU of the cluster).
    init_kwargs : dict, optional
        Extra ``ray.init`` arguments (default ``include_dashboard=False``, ``log_to_driver=False``).

    Yields
    ------
    None

    Raises
    ------
    MissingDependencyError
        Ray is not installed (``pip install "cxr_embed[ray]"``).

    Examples
    --------
    >>> import cxr_embed
    >>> from cxr_embed.learn.distributed import ray_backend
    >>> with ray_backend("auto"):  # doctest: +SKIP
    ...     res = cxr_embed.cross_validate_grouped(clf, X, y, groups, n_splits=5, random_state=0)
    """
    import joblib

    with ray_session(address, init_kwargs):
        from ray.util.joblib import register_ray

        register_ray()
        with joblib.parallel_config(backend="ray", n_jobs=n_jobs):
            yield
