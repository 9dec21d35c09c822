"""Small helpers shared by several modules (no heavy imports here)."""
from __future__ import annotations

import hashlib
import importlib
import json
import numbers
import os
from pathlib import Path
from typing import Any

from .exceptions import MissingDependencyError

__all__: list[str] = []  # private module


def stable_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal configs hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def require_int(value: Any, name: str, least: int, *, also: str = "", hint: str = "") -> int:
    """``value`` as an int of at least ``least``; else a ValueError naming ``name`` (bools are refused).

    ``also`` names other accepted values (e.g. ``" or None (every row)"``), ``hint`` the way out.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}{also}, got {value!r}{hint}")
    return int(value)


def cache_dir(override=None) -> Path:
    """Directory for converted weights and other caches.

    ``override`` wins, then ``$CXR_EMBED_CACHE``, then ``$XDG_CACHE_HOME/cxr_embed``,
    then ``~/.cache/cxr_embed``. The directory is created on first use, not on import.
    """
    if override is not None:
        path = Path(override)
    elif os.environ.get("CXR_EMBED_CACHE"):
        path = Path(os.environ["CXR_EMBED_CACHE"])
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "cxr_embed"
    path.mkdir(parents=True, exist_ok=True)
    return path


def require(module: str, extra: str | None = None, package: str | None = None):
    """Import ``module`` or raise :class:`MissingDependencyError` with an install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = package or module.split(".")[0]
        hint = f"pip install 'cxr_embed[{extra}]'" if extra else f"pip install {pkg}"
        raise MissingDependencyError(f"{module} is needed for this feature but is not installed; fix: {hint}") from e
