"""Ray sessions for the parts that run on a cluster: import Ray late, connect or start, clean up.

Ray is an optional extra (``pip install "cxr_embed[ray]"``); it is imported only inside these
functions. :func:`ray_session` reuses a session this process already has, connects to
``address`` when one is given, and otherwise starts a local Ray instance sized to this
machine; it shuts down only what it started or connected itself.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from ._utils import require

__all__: list[str] = []  # private module

logger = logging.getLogger(__name__)

# Quiet defaults for a session we start or connect: no dashboard (a web server and its agents),
# no worker output copied to the driver's terminal (stdout of `cxr-embed ... --json` stays JSON).
_INIT_DEFAULTS: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}


def import_ray(data: bool = False):
    """Ray (and ``ray.data`` when ``data``), or :class:`MissingDependencyError` naming the extra."""
    ray = require("ray", extra="ray", package="ray[data]")
    if data:
        require("ray.data", extra="ray", package="ray[data]")
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, init_kwargs: dict | None = None, *, data: bool = False) -> Iterator[Any]:
    """Context manager yielding the ``ray`` module with a connected session.

    Parameters
    ----------
    address : str, optional
        ``None``: reuse this process's session if it has one, else start a local instance
        (all CPUs and GPUs of this machine). A cluster address (``"auto"``, ``"HOST:6379"``,
        ``"ray://HOST:10001"``): connect to it, unless this process is already connected.
    init_kwargs : dict, optional
        Extra arguments of ``ray.init`` (they override the quiet defaults:
        ``include_dashboard=False``, ``log_to_driver=False``).
    data : bool
        Also require ``ray.data``.

    Yields
    ------
    module
        ``ray``.
    """
    ray = import_ray(data=data)
    if ray.is_initialized():
        logger.info("using the Ray session this process is already connected to%s",
                    f" (address {address!r} ignored)" if address else "")
        yield ray
        return
    kwargs = dict(_INIT_DEFAULTS)
    kwargs.update(init_kwargs or {})
    context = ray.init(address=address, **kwargs)
    logger.info("%s Ray (%s)", "connected to" if address else "started a local", getattr(context, "address_info", ""))
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_resources(ray) -> dict[str, float]:
    """Total resources of the connected cluster (``CPU``, ``GPU``, ...), as floats."""
    return {str(k): float(v) for k, v in ray.cluster_resources().items()}
