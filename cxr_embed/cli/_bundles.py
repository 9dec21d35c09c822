"""Bundle keys on the command line: ``--key-file``, ``$CXR_EMBED_BUNDLE_KEY`` and ``--trust-unsigned``.

Shared by every command that saves (``fit``) or loads (``evaluate``, ``predict``, ``explain``) a
model bundle; not a command module itself. The key signs bundles with HMAC-SHA256 (see
:mod:`cxr_embed.learn.persistence`); ``--key-file`` wins over the environment variable.
"""
from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path
from typing import Any

__all__ = ["KEY_ENV", "add_key_arguments", "bundle_key", "load_bundle"]

#: environment variable holding the bundle key (the text itself)
KEY_ENV = "CXR_EMBED_BUNDLE_KEY"
_MAX_KEY_BYTES = 1 << 16


def add_key_arguments(parser: argparse.ArgumentParser, *, loading: bool) -> None:
    """Add ``--key-file`` (and, for commands that load a bundle, ``--trust-unsigned``).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    loading : bool
        Whether the command loads a bundle (adds ``--trust-unsigned``).

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_key_arguments(p, loading=True)
    >>> p.parse_args(["--key-file", "k.txt", "--trust-unsigned"]).trust_unsigned
    True
    """
    verb = "verify the bundle's signature with" if loading else "sign the bundle with"
    parser.add_argument("--key-file", default=None, metavar="PATH",
                        help=f"{verb} the secret in this file (trailing newline ignored); default: "
                             f"${KEY_ENV} when set")
    if loading:
        parser.add_argument("--trust-unsigned", action="store_true",
                            help="load a signed bundle without a key (signature unchecked), or an unsigned one "
                                 "with a key; only for bundles whose origin you trust")


def bundle_key(args: argparse.Namespace) -> bytes | None:
    """The key from ``--key-file`` or ``$CXR_EMBED_BUNDLE_KEY``; None when neither is given.

    Raises
    ------
    BundleIntegrityError
        The key file is missing, not a regular file, too large or empty.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as fh:
    ...     _ = fh.write("s3cret   ")
    >>> bundle_key(argparse.Namespace(key_file=fh.name))
    b's3cret'
    """
    import cxr_embed

    path = getattr(args, "key_file", None)
    if path is None:
        value = os.environ.get(KEY_ENV)
        if value is None:
            return None
        if not value.strip():
            raise cxr_embed.BundleIntegrityError(f"${KEY_ENV} is set but empty; fix: set it to the bundle key or "
                                                 "unset it")
        return value.strip().encode("utf-8")
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise cxr_embed.BundleIntegrityError(f"{p}: cannot read the key file ({e.strerror}); fix: check --key-file") from e
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_KEY_BYTES:
        raise cxr_embed.BundleIntegrityError(f"{p}: the key file must be a regular file of at most "
                                             f"{_MAX_KEY_BYTES} bytes; fix: check --key-file")
    try:
        key = p.read_bytes().strip()
    except OSError as e:
        raise cxr_embed.BundleIntegrityError(f"{p}: cannot read the key file ({e.strerror})") from e
    if not key:
        raise cxr_embed.BundleIntegrityError(f"{p}: the key file is empty; fix: write the bundle key into it")
    return key


def load_bundle(args: argparse.Namespace, path: Any, **kwargs: Any):
    """``cxr_embed.load_model(path, key=..., trust_unsigned=...)`` with the command's key options.

    Examples
    --------
    >>> load_bundle(args, "model")  # doctest: +SKIP
    """
    import cxr_embed

    return cxr_embed.load_model(path, key=bundle_key(args),
                                trust_unsigned=bool(getattr(args, "trust_unsigned", False)), **kwargs)
