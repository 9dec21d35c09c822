"""Self-describing, crash-safe HDF5 cache of embeddings: one group per backbone fingerprint.

Layout of the store file (``store.h5``)::

    /                      attrs: format="cxr_embed.embeddings", format_version, library_version,
                                  tensorflow_version (when known), created, updated
    /embeddings/<fingerprint>/
                           attrs: fingerprint, config (the backbone's full config as JSON),
                                  dim, dtype, count, created, updated
        ids                (n,) variable-length UTF-8 strings, chunked, resizable
        embeddings         (n, dim) float32 or float16, chunked, compressed, resizable on axis 0

Crash safety. The main file is never modified in place. A writer appends each batch to a
*journal* of small HDF5 files beside the store (``store.h5.journal/00000001.h5`` ...), each written
under a temporary name, flushed, fsynced and atomically renamed, so a batch is either fully
committed or absent whatever moment the process is killed. When the writer closes (and whenever
a later writer opens a store with a leftover journal) the journal is *compacted*: the main file is
copied, the journal rows appended to the copy, the copy fsynced and atomically renamed over the
main file, and only then are the journal files deleted. Readers see main file + journal, with
duplicate ids (a compaction killed between the rename and the journal deletion) dropped, so a
store killed at any moment opens and reads back exactly the committed rows.

Concurrency. One writer at a time: :meth:`EmbeddingStore.writer` takes an exclusive
``fcntl.flock`` on ``store.h5.lock``. The kernel releases it when the file descriptor closes or the
process dies (even by SIGKILL), so a killed writer never leaves a stale lock; the lock file itself
may remain and is harmless. A second writer, in another process or in the same one, gets
:class:`~cxr_embed.StoreLockedError`. Readers take no lock.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .._utils import stable_json
from .._version import __version__
from ..exceptions import FingerprintMismatchError, MissingIdsError, StoreError, StoreLockedError

__all__ = ["EmbeddingStore", "StoreWriter", "merge", "FORMAT", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

FORMAT = "cxr_embed.embeddings"
FORMAT_VERSION = 1
_JOURNAL_FORMAT = "cxr_embed.journal"
_GROUP = "embeddings"
_DTYPES = ("float32", "float16")
_COMPRESSIONS = ("gzip", "lzf", None)
_CHUNK_BYTES = 1 << 20  # about 1 MiB per chunk of embeddings


def _h5py():
    import h5py  # a hard dependency; imported late so that importing cxr_embed stays cheap

    return h5py


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _str_dtype():
    return _h5py().string_dtype(encoding="utf-8")


def _decode(values) -> np.ndarray:
    out = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    return np.asarray(out, dtype=object).astype(str) if out else np.asarray([], dtype=str)


def _chunk_rows(dim: int, itemsize: int) -> int:
    return int(max(1, min(65536, _CHUNK_BYTES // max(1, dim * itemsize))))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _root_attrs(f, *, new: bool) -> None:
    now = _now()
    if new:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created"] = now
    f.attrs["library_version"] = __version__
    tf = sys.modules.get("tensorflow")
    if tf is not None and getattr(tf, "__version__", None):
        f.attrs["tensorflow_version"] = str(tf.__version__)
    f.attrs["updated"] = now


def _as_identity(backbone_or_fingerprint) -> tuple[str, str | None, int | None]:
    """(fingerprint, config JSON or None, dim or None) of a backbone or a fingerprint string."""
    if isinstance(backbone_or_fingerprint, str):
        return backbone_or_fingerprint, None, None
    try:
        fp = str(backbone_or_fingerprint.fingerprint)
    except AttributeError as e:
        raise TypeError(
            "expected a Backbone (an object with .fingerprint, .config and .dim) or a fingerprint string, "
            f"got {type(backbone_or_fingerprint).__name__}"
        ) from e
    config = getattr(backbone_or_fingerprint, "config", None)
    dim = getattr(backbone_or_fingerprint, "dim", None)
    return fp, (stable_json(config) if config is not None else None), (int(dim) if dim is not None else None)


# Config entries that describe where a backbone came from, not which function it is: a Keras
# upgrade or a moved weights file keeps the fingerprint (architecture and weight *content*), so
# they must not lock a store. They stay recorded in the group's config.
_PROVENANCE_KEYS = ("keras_version", "weights")


def _identity_config(config) -> str:
    """Canonical JSON of a backbone config without its provenance keys (``_PROVENANCE_KEYS``)."""
    value = json.loads(config) if isinstance(config, (str, bytes)) else config
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in _PROVENANCE_KEYS}
    return stable_json(value)


def _compute_list(attrs) -> list[dict]:
    """The ``compute`` provenance of a group or journal batch: a list of dicts (possibly empty)."""
    raw = attrs.get("compute")
    if raw is None:
        return []
    value = json.loads(raw if isinstance(raw, str) else raw.decode() if isinstance(raw, bytes) else str(raw))
    return [value] if isinstance(value, dict) else list(value or [])


def _union_compute(*lists) -> list[dict]:
    out, seen = [], set()
    for lst in lists:
        for item in lst:
            key = stable_json(item)
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


def _check_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be a 1-D sequence of strings, got shape {arr.shape}")
    return np.asarray([str(i) for i in arr.tolist()], dtype=object).astype(str) if arr.size else np.asarray([], str)


class EmbeddingStore:
    """A self-describing HDF5 file of embeddings, one group per backbone fingerprint.

    Parameters
    ----------
    path : str or Path
        The HDF5 file. With ``mode="a"`` it is created by the first writer; with ``mode="r"``
        it must exist and writing is refused.
    mode : {"a", "r"}
        Append (read and write) or read-only.
    compression : {"gzip", "lzf", None}
        Compression of the ``embeddings`` datasets created in this store.

    Notes
    -----
    Embeddings are keyed by the backbone's ``fingerprint``: a group written by one backbone
    configuration is never mixed with another's. Reading checks the file's ``format`` attribute
    and the group's stored fingerprint and config against the backbone asked for.

    Examples
    --------
    >>> import numpy as np, types, tempfile, os
    >>> bb = types.SimpleNamespace(fingerprint="abc123", config={"name": "demo"}, dim=4)
    >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
    >>> with store.writer(bb) as w:
    ...     w.append(["a", "b"], np.ones((2, 4), np.float32))
    >>> ids, X = store.load(bb, ["b"])
    >>> ids.tolist(), X.shape
    (['b'], (1, 4))
    """

    def __init__(self, path, mode: str = "a", *, compression: str | None = "gzip"):
        if mode not in ("a", "r"):
            raise ValueError(f"mode must be 'a' (append) or 'r' (read-only), got {mode!r}")
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
        self.path = Path(path)
        self.mode = mode
        self.compression = compression
        if mode == "r" and not self.path.exists():
            raise StoreError(f"{self.path}: no such embedding store; fix: check the path or open with mode='a' to create it")
        if self.path.exists():
            self._check_format()

    # ------------------------------------------------------------------ paths
    @property
    def journal_dir(self) -> Path:
        """Directory of committed-but-not-compacted batches (``<path>.journal``)."""
        return self.path.with_name(self.path.name + ".journal")

    @property
    def lock_path(self) -> Path:
        """Lock file taken with ``fcntl.flock`` by the single writer (``<path>.lock``)."""
        return self.path.with_name(self.path.name + ".lock")

    def _journal_files(self) -> list[Path]:
        if not self.journal_dir.is_dir():
            return []
        return sorted(p for p in self.journal_dir.glob("*.h5") if not p.name.startswith("."))

    # ----------------------------------------------------------------- checks
    def _check_format(self) -> None:
        h5py = _h5py()
        try:
            with h5py.File(self.path, "r") as f:
                fmt = f.attrs.get("format")
                ver = f.attrs.get("format_version")
        except OSError as e:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({e}); fix: point to a store written by cxr_embed") from e
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT:
            raise StoreError(
                f"{self.path}: expected an HDF5 file with root attribute format={FORMAT!r}, found {fmt!r}; "
                "fix: this is not a cxr_embed embedding store, choose another path"
            )
        if ver is None or int(ver) > FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: store format_version {ver!r} is newer than this library reads ({FORMAT_VERSION}); "
                "fix: upgrade cxr_embed"
            )

    @staticmethod
    def _check_group_identity(path, attrs, fingerprint: str, config: str | None, dim: int | None) -> None:
        stored_fp = attrs.get("fingerprint")
        if stored_fp != fingerprint:
            raise FingerprintMismatchError(
                f"{path}: group for fingerprint {fingerprint!r} holds embeddings stamped with fingerprint "
                f"{stored_fp!r}; the store is inconsistent, refusing to mix them; fix: extract into a new store"
            )
        if config is not None and _identity_config(attrs.get("config", "null")) != _identity_config(config):
            raise FingerprintMismatchError(
                f"{path}: group {fingerprint!r} was written by a backbone whose config differs from the one asked "
                f"for (stored {attrs.get('config')!r}, asked {config!r}); refusing to mix them; "
                "fix: use the backbone that wrote the store, or a new store"
            )
        if dim is not None and int(attrs.get("dim", -1)) != dim:
            raise FingerprintMismatchError(
                f"{path}: group {fingerprint!r} holds embeddings of dim {attrs.get('dim')}, the backbone asked for "
                f"has dim {dim}; refusing to mix them; fix: use a new store"
            )

    # ---------------------------------------------------------------- reading
    def _gather(self, fingerprint: str, config: str | None, dim: int | None, *, with_data: bool,
                want: list[str] | None = None):
        """Ids (and optionally embeddings) in commit order: main file then journal, deduplicated.

        With ``want`` (unique ids), only the rows of those ids are read (chunk by chunk) and
        ``X`` is aligned to ``want``, with NaN-free zeros where an id is absent; ``found`` says which.
        """
        h5py = _h5py()
        want_index = None if want is None else {k: i for i, k in enumerate(want)}
        for _attempt in range(5):
            journal = self._journal_files()
            ids_parts: list[np.ndarray] = []
            x_parts: list = []
            meta = None
            computes: list[dict] = []
            try:
                sources = []
                if self.path.exists():
                    self._check_format()
                    sources.append((self.path, f"{_GROUP}/{fingerprint}"))
                sources.extend((jp, "/") for jp in journal)
                for src_path, key in sources:
                    with h5py.File(src_path, "r") as f:
                        g = f.get(key)
                        if g is None or g.attrs.get("fingerprint", fingerprint) != fingerprint and key == "/":
                            continue
                        self._check_group_identity(src_path, g.attrs, fingerprint, config, dim)
                        meta = meta or dict(g.attrs)
                        computes = _union_compute(computes, _compute_list(g.attrs))
                        src_ids = _read_ids(g["ids"])
                        ids_parts.append(src_ids)
                        if with_data and want_index is None:
                            x_parts.append(_read_rows(g["embeddings"]))
                        elif with_data:
                            rows = np.asarray([r for r, k in enumerate(src_ids.tolist()) if k in want_index], np.int64)
                            x_parts.append((src_ids[rows], _read_selected(g["embeddings"], rows)))
            except FileNotFoundError:
                continue  # a compaction removed a journal file under us: read again
            break
        else:  # pragma: no cover - five compactions in a row during one read
            raise StoreError(f"{self.path}: the store kept changing while being read; fix: retry when the writer is done")
        ids = np.concatenate(ids_parts) if ids_parts else np.asarray([], dtype=str)
        if meta is not None:
            meta["compute"] = stable_json(computes)
        d = int(meta["dim"]) if meta is not None else (dim or 0)
        X = None
        # drop duplicates left by a compaction killed between rename and journal cleanup
        _, first = np.unique(ids, return_index=True)
        keep = np.sort(first) if first.size != ids.size else None
        if with_data and want_index is None:
            X = np.concatenate(x_parts).astype(np.float32, copy=False) if x_parts else np.zeros((0, d), np.float32)
            X = X[keep] if keep is not None else X
        elif with_data:
            X = np.zeros((len(want_index), d), np.float32)
            found = np.zeros(len(want_index), bool)
            for part_ids, part_X in x_parts:
                for k, row in zip(part_ids.tolist(), part_X):
                    i = want_index[k]
                    if not found[i]:  # first occurrence wins (duplicates have identical bits)
                        X[i] = row
                        found[i] = True
            X = (X, found)
        if keep is not None:
            ids = ids[keep]
        return ids, X, meta

    def has(self, backbone_or_fingerprint) -> bool:
        """Whether the store holds a group for this backbone (or fingerprint).

        Parameters
        ----------
        backbone_or_fingerprint : Backbone or str

        Returns
        -------
        bool

        Examples
        --------
        >>> store.has("0123abcd")  # doctest: +SKIP
        False
        """
        fp, config, dim = _as_identity(backbone_or_fingerprint)
        return self._gather(fp, config, dim, with_data=False)[2] is not None

    def __contains__(self, backbone_or_fingerprint) -> bool:
        return self.has(backbone_or_fingerprint)

    def ids(self, backbone_or_fingerprint) -> np.ndarray:
        """Ids stored for a backbone, in commit order.

        Parameters
        ----------
        backbone_or_fingerprint : Backbone or str

        Returns
        -------
        ndarray of str, shape (n,)
            Empty when the store has no group for this backbone.

        Raises
        ------
        FingerprintMismatchError
            The group's stored fingerprint or config disagrees with the backbone.

        Examples
        --------
        >>> store.ids(backbone)[:3]  # doctest: +SKIP
        array(['img001', 'img002', 'img003'], dtype='<U6')
        """
        fp, config, dim = _as_identity(backbone_or_fingerprint)
        return self._gather(fp, config, dim, with_data=False)[0]

    def load(self, backbone_or_fingerprint, ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read embeddings, aligned to the order of ``ids``.

        Parameters
        ----------
        backbone_or_fingerprint : Backbone or str
            Which group to read. A Backbone is also checked against the stored config.
        ids : sequence of str, optional
            Ids to read, in the order wanted. ``None`` reads every row in commit order.

        Returns
        -------
        ids : ndarray of str, shape (n,)
        X : ndarray of shape (n, dim), float32
            Stored float16 embeddings are returned as float32.

        Raises
        ------
        MissingIdsError
            Some ids (or the whole group) are absent; the message lists the first ten and the count.
        FingerprintMismatchError
            The stored group was written by a different backbone configuration.

        Examples
        --------
        >>> ids, X = store.load(backbone, ["img002", "img001"])  # doctest: +SKIP
        >>> X.shape  # doctest: +SKIP
        (2, 1280)
        """
        fp, config, dim = _as_identity(backbone_or_fingerprint)
        want = None if ids is None else _check_ids(ids)
        unique = None if want is None else list(dict.fromkeys(want.tolist()))
        all_ids, X, meta = self._gather(fp, config, dim, with_data=True, want=unique)
        if meta is None:
            have = ", ".join(self.fingerprints()) or "none"
            raise MissingIdsError(
                f"{self.path}: no embeddings for fingerprint {fp!r} (fingerprints stored: {have}); "
                "fix: run cxr_embed.extract with this backbone first"
            )
        if want is None:
            return all_ids, X
        X, found = X
        missing = [k for k, ok in zip(unique, found) if not ok]
        if missing:
            raise MissingIdsError(
                f"{self.path}: {len(missing)} of {len(want)} ids asked for are not stored for fingerprint {fp!r}, "
                f"first ten: {missing[:10]}; fix: run cxr_embed.extract on them (it computes only missing ids)"
            )
        index = {k: i for i, k in enumerate(unique)}
        pos = np.fromiter((index[k] for k in want.tolist()), dtype=np.int64, count=len(want))
        return want, X[pos]

    def fingerprints(self) -> list[str]:
        """Fingerprints of the groups in the store (main file and pending journal), in creation order.

        Returns
        -------
        list of str

        Examples
        --------
        >>> store.fingerprints()  # doctest: +SKIP
        ['3f2a...']
        """
        h5py = _h5py()
        fps: list[str] = []
        if self.path.exists():
            self._check_format()
            with h5py.File(self.path, "r") as f:
                if _GROUP in f:
                    fps.extend(f[_GROUP].keys())
        for jp in self._journal_files():
            with contextlib.suppress(FileNotFoundError, OSError):
                with h5py.File(jp, "r") as j:
                    fp = j.attrs.get("fingerprint")
                    if fp and fp not in fps:
                        fps.append(str(fp))
        return fps

    def info(self) -> dict:
        """Describe the store: file attributes and, per fingerprint, count, dim, dtype and config.

        Returns
        -------
        dict
            ``{"path", "format", "format_version", "library_version", "tensorflow_version",
            "created", "updated", "pending_journal_batches", "backbones": {fingerprint: {"count",
            "dim", "dtype", "config", "compute", "created", "updated"}}}``; ``compute`` lists how the
            rows were computed (precision, replicas, devices, XLA; one entry per distinct setting).

        Examples
        --------
        >>> sorted(store.info()["backbones"])  # doctest: +SKIP
        ['3f2a...']
        """
        h5py = _h5py()
        out: dict[str, Any] = {"path": str(self.path), "format": FORMAT, "backbones": {}}
        if self.path.exists():
            self._check_format()
            with h5py.File(self.path, "r") as f:
                for key in ("format_version", "library_version", "tensorflow_version", "created", "updated"):
                    if key in f.attrs:
                        v = f.attrs[key]
                        out[key] = v.item() if hasattr(v, "item") else v
        out["pending_journal_batches"] = len(self._journal_files())
        for fp in self.fingerprints():
            ids, _, meta = self._gather(fp, None, None, with_data=False)
            out["backbones"][fp] = {
                "count": int(ids.size),
                "dim": int(meta["dim"]),
                "dtype": str(meta["dtype"]),
                "config": json.loads(meta["config"]),
                "compute": json.loads(meta.get("compute") or "[]"),
                "created": str(meta.get("created", "")),
                "updated": str(meta.get("updated", "")),
            }
        return out

    def __repr__(self) -> str:
        try:
            parts = [f"{fp[:12]}: {b['count']} x {b['dim']} {b['dtype']}" for fp, b in self.info()["backbones"].items()]
        except (StoreError, OSError) as e:
            parts = [f"unreadable: {e}"]
        return f"EmbeddingStore({str(self.path)!r}, mode={self.mode!r}; " + ("; ".join(parts) or "empty") + ")"

    # ---------------------------------------------------------------- writing
    def writer(self, backbone, dtype: str | None = None) -> "StoreWriter":
        """Open the single writer of this store for one backbone (a context manager).

        Parameters
        ----------
        backbone : Backbone
            Any object with ``fingerprint`` (str), ``config`` (JSON-able dict) and ``dim`` (int).
        dtype : {"float32", "float16"}, optional
            Storage type of a new group; ``None`` keeps an existing group's type, else float32.

        Returns
        -------
        StoreWriter
            Use as ``with store.writer(bb) as w: w.append(ids, X)``.

        Raises
        ------
        StoreLockedError
            Another writer (this or another process) holds the store.
        FingerprintMismatchError
            The store's group for this fingerprint was written with another config or dim.

        Examples
        --------
        >>> with store.writer(backbone, dtype="float16") as w:  # doctest: +SKIP
        ...     w.append(["img001"], X[:1])
        """
        if self.mode == "r":
            raise StoreError(f"{self.path}: store opened read-only (mode='r'); fix: open with mode='a' to write")
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        return StoreWriter(self, backbone, dtype)

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise StoreLockedError(
                    f"{self.path}: another writer holds the store (lock {self.lock_path}); only one writer at a time; "
                    "fix: wait for the other extraction to finish, or write to a separate store and merge() them"
                ) from e
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:  # pragma: no cover - informational only
                pass
            yield
        finally:
            os.close(fd)  # releases the flock

    def compact(self) -> None:
        """Fold pending journal batches into the main file (takes the writer lock).

        Normally called for you when a writer closes or opens; useful after a killed run
        when you only want to read.

        Examples
        --------
        >>> store.compact()  # doctest: +SKIP
        """
        if self.mode == "r":
            raise StoreError(f"{self.path}: store opened read-only (mode='r'); fix: open with mode='a' to compact")
        with self._locked():
            self._compact_locked()

    def _compact_locked(self) -> None:
        h5py = _h5py()
        jdir = self.journal_dir
        for stale in jdir.glob(".*.tmp") if jdir.is_dir() else []:
            stale.unlink(missing_ok=True)  # a batch killed before its rename: never committed
        for stale in self.path.parent.glob(f".{self.path.name}.*.compact.tmp"):
            stale.unlink(missing_ok=True)  # a compaction killed before its rename
        journal = self._journal_files()
        if not journal:
            return
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.compact.tmp")
        try:
            if self.path.exists():
                self._check_format()
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "a") as f:
                _root_attrs(f, new="format" not in f.attrs)
                for jp in journal:
                    with h5py.File(jp, "r") as j:
                        _append_to_group(f, j, self.compression, source=jp)
            _fsync_file(tmp)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        for jp in journal:
            jp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            jdir.rmdir()
        logger.info("compacted %d journal batches into %s", len(journal), self.path)


class StoreWriter:
    """The single writer of an :class:`EmbeddingStore` for one backbone (see :meth:`EmbeddingStore.writer`).

    Each :meth:`append` is committed atomically (a journal file renamed into place), so a process
    killed at any moment loses at most the batch being appended. Closing the writer compacts the
    journal into the main file and releases the lock.

    Attributes
    ----------
    existing : set of str
        Ids already stored for this backbone (grows with each append).
    """

    def __init__(self, store: EmbeddingStore, backbone, dtype: str | None):
        self.store = store
        self.fingerprint, self._config, self.dim = _as_identity(backbone)
        if self._config is None or self.dim is None:
            raise TypeError("writer() needs a Backbone with .fingerprint, .config and .dim, not a fingerprint string")
        compute = getattr(backbone, "compute", None)
        self._compute = stable_json([compute]) if isinstance(compute, dict) else None
        self._requested_dtype = dtype
        self.dtype = dtype or "float32"
        self.existing: set[str] = set()
        self._lock_cm = None
        self._seq = 0
        self.n_appended = 0

    def __enter__(self) -> "StoreWriter":
        self._lock_cm = self.store._locked()
        self._lock_cm.__enter__()
        try:
            self.store._compact_locked()  # fold in what a killed run left behind
            ids, _, meta = self.store._gather(self.fingerprint, self._config, self.dim, with_data=False)
            if meta is not None:
                stored = str(meta["dtype"])
                if self._requested_dtype is not None and self._requested_dtype != stored:
                    raise StoreError(
                        f"{self.store.path}: group {self.fingerprint!r} is stored as {stored}, writer asked for "
                        f"{self._requested_dtype}; fix: use dtype={stored!r} (or dtype=None) or a new store"
                    )
                self.dtype = stored
            self.existing = set(ids.tolist())
            self._seq = max((int(p.stem) for p in self.store._journal_files() if p.stem.isdigit()), default=0)
        except BaseException:
            self._lock_cm.__exit__(*sys.exc_info())
            self._lock_cm = None
            raise
        return self

    def append(self, ids: Sequence[str], X: np.ndarray, *, compute: dict | None = None) -> None:
        """Commit a batch of embeddings.

        Parameters
        ----------
        ids : sequence of str, length n
            New ids; duplicates within the batch or already stored are refused.
        X : array-like of shape (n, dim)
            Embeddings, cast to the group's dtype.
        compute : dict, optional
            How these rows were computed (provenance) when not by the writer's ``backbone.compute``.

        Raises
        ------
        ValueError
            Shapes disagree, values are not finite, or an id is duplicated.

        Examples
        --------
        >>> with store.writer(backbone) as w:  # doctest: +SKIP
        ...     w.append(["a", "b"], X)
        """
        if self._lock_cm is None:
            raise StoreError(f"{self.store.path}: writer is not open; fix: use it as `with store.writer(bb) as w:`")
        ids = _check_ids(ids)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape != (ids.size, self.dim):
            raise ValueError(f"expected X of shape ({ids.size}, {self.dim}) for {ids.size} ids, got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("embeddings contain NaN or inf; refusing to store them")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"duplicate ids within the batch: {uniq[counts > 1][:10].tolist()}")
        dup = [i for i in ids.tolist() if i in self.existing]
        if dup:
            raise ValueError(
                f"{self.store.path}: {len(dup)} ids are already stored for fingerprint {self.fingerprint!r}, "
                f"first ten: {dup[:10]}; fix: skip ids in writer.existing"
            )
        if ids.size == 0:
            return
        X = X.astype(self.dtype, copy=False)
        self._seq += 1
        jdir = self.store.journal_dir
        jdir.mkdir(exist_ok=True)
        final = jdir / f"{self._seq:08d}.h5"
        tmp = jdir / f".{self._seq:08d}.h5.tmp"
        h5py = _h5py()
        with h5py.File(tmp, "w") as j:
            j.attrs["format"] = _JOURNAL_FORMAT
            j.attrs["format_version"] = FORMAT_VERSION
            j.attrs["fingerprint"] = self.fingerprint
            j.attrs["config"] = self._config
            j.attrs["dim"] = self.dim
            j.attrs["dtype"] = self.dtype
            j.attrs["created"] = _now()
            if isinstance(compute, dict) or self._compute is not None:  # compute= e.g. from a Ray worker
                j.attrs["compute"] = stable_json([compute]) if isinstance(compute, dict) else self._compute
            j.create_dataset("ids", data=ids.astype(object), dtype=_str_dtype())
            j.create_dataset("embeddings", data=X)
        _fsync_file(tmp)
        os.replace(tmp, final)  # the commit point
        _fsync_dir(jdir)
        self.existing.update(ids.tolist())
        self.n_appended += int(ids.size)

    def close(self) -> None:
        """Compact the journal into the main file and release the lock (idempotent)."""
        if self._lock_cm is None:
            return
        try:
            self.store._compact_locked()
        finally:
            cm, self._lock_cm = self._lock_cm, None
            cm.__exit__(None, None, None)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


# ---------------------------------------------------------------------- helpers
def _read_ids(ds) -> np.ndarray:
    n = ds.shape[0]
    step = max(1, ds.chunks[0] if ds.chunks else 65536)
    parts = [_decode(ds[i : i + step]) for i in range(0, n, step)]
    return np.concatenate(parts) if parts else np.asarray([], dtype=str)


def _read_rows(ds) -> np.ndarray:
    n, dim = ds.shape
    out = np.empty((n, dim), np.float32)
    step = max(1, ds.chunks[0] if ds.chunks else _chunk_rows(dim, 4))
    for i in range(0, n, step):
        out[i : i + step] = ds[i : i + step]
    return out


def _read_selected(ds, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (increasing) of a 2-D dataset, reading only the chunks that hold them."""
    dim = ds.shape[1]
    out = np.empty((rows.size, dim), np.float32)
    if rows.size == 0:
        return out
    step = max(1, ds.chunks[0] if ds.chunks else _chunk_rows(dim, 4))
    blocks = rows // step  # increasing, so each block's rows are one contiguous run
    cuts = np.flatnonzero(np.diff(blocks)) + 1
    for sel in np.split(np.arange(rows.size), cuts):
        start = int(blocks[sel[0]]) * step
        block = ds[start : start + step]
        out[sel] = block[rows[sel] - start]
    return out


def _append_to_group(f, src, compression, *, source) -> int:
    """Append the rows of a journal file or a store group ``src`` to file ``f``; dedupe identical rows."""
    fp = src.attrs["fingerprint"]
    dim = int(src.attrs["dim"])
    dtype = str(src.attrs["dtype"])
    config = src.attrs["config"]
    root = f.require_group(_GROUP)
    g = root.get(fp)
    now = _now()
    if g is None:
        g = root.create_group(fp)
        g.attrs.update({"fingerprint": fp, "config": config, "dim": dim, "dtype": dtype, "count": 0, "created": now})
        rows = _chunk_rows(dim, np.dtype(dtype).itemsize)
        g.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=_str_dtype(), chunks=(max(rows, 1024),))
        g.create_dataset(
            "embeddings", shape=(0, dim), maxshape=(None, dim), dtype=dtype, chunks=(rows, dim),
            compression=compression, shuffle=compression is not None,
        )
    else:
        EmbeddingStore._check_group_identity(source, g.attrs, fp, stable_json(json.loads(config)), dim)
        if str(g.attrs["dtype"]) != dtype:
            raise StoreError(f"{source}: rows of dtype {dtype} cannot join group {fp!r} stored as {g.attrs['dtype']}")
    new_ids = _read_ids(src["ids"])
    new_X = _read_rows(src["embeddings"])
    old_ids = _read_ids(g["ids"])
    index = {k: i for i, k in enumerate(old_ids.tolist())}
    keep = np.ones(new_ids.size, bool)
    seen: set[str] = set()
    old_X_ds = g["embeddings"]
    for i, k in enumerate(new_ids.tolist()):
        if k in index or k in seen:
            if k in index:
                other = np.asarray(old_X_ds[index[k]], dtype=dtype)
            else:
                other = new_X[np.flatnonzero(new_ids == k)[0]].astype(dtype)
            if not np.array_equal(other.view(np.uint8), new_X[i].astype(dtype).view(np.uint8)):
                raise StoreError(
                    f"{source}: id {k!r} of fingerprint {fp!r} is stored twice with different embedding bits; "
                    "refusing to merge; fix: re-extract one of the shards"
                )
            keep[i] = False
        seen.add(k)
    new_ids, new_X = new_ids[keep], new_X[keep]
    n0 = g["ids"].shape[0]
    n1 = n0 + new_ids.size
    if new_ids.size:
        g["ids"].resize((n1,))
        g["embeddings"].resize((n1, dim))
        step = g["embeddings"].chunks[0]
        for i in range(0, new_ids.size, step):
            g["ids"][n0 + i : n0 + i + step] = new_ids[i : i + step].astype(object)
            g["embeddings"][n0 + i : n0 + i + step] = new_X[i : i + step].astype(dtype)
    computes = _union_compute(_compute_list(g.attrs), _compute_list(src.attrs))
    if computes:
        g.attrs["compute"] = stable_json(computes)
    g.attrs["count"] = n1
    g.attrs["updated"] = now
    return int(new_ids.size)


def merge(stores: Iterable, into) -> EmbeddingStore:
    """Merge shards extracted on several machines into one store.

    Groups with the same fingerprint are concatenated (ids present in several shards with
    identical bits are kept once; different bits raise); different fingerprints stay separate
    groups. ``into`` may already hold data; it is written through its lock and compaction, so a
    kill during the merge leaves it readable.

    Parameters
    ----------
    stores : iterable of EmbeddingStore or path
        The shards (read-only).
    into : EmbeddingStore or path
        The destination (created if missing).

    Returns
    -------
    EmbeddingStore
        The destination store.

    Raises
    ------
    StoreError
        A shard is not a store, or an id has conflicting bits across shards.
    FingerprintMismatchError
        Groups with one fingerprint disagree on config or dim.

    Examples
    --------
    >>> merged = merge(["shard0.h5", "shard1.h5"], "all.h5")  # doctest: +SKIP
    >>> merged.info()["backbones"]  # doctest: +SKIP
    """
    h5py = _h5py()
    dest = into if isinstance(into, EmbeddingStore) else EmbeddingStore(into, mode="a")
    if dest.mode == "r":
        raise StoreError(f"{dest.path}: destination opened read-only; fix: open with mode='a'")
    shards = [s if isinstance(s, EmbeddingStore) else EmbeddingStore(s, mode="r") for s in stores]
    with dest._locked():
        dest._compact_locked()
        for shard in shards:
            if shard.path.resolve() == dest.path.resolve():
                continue
            for fp in shard.info()["backbones"]:
                ids, X, meta = shard._gather(fp, None, None, with_data=True)
                tmp = dest.journal_dir / f".merge-{uuid.uuid4().hex[:8]}.tmp"
                dest.journal_dir.mkdir(exist_ok=True)
                # stage the shard's group as one journal batch, then compact: crash-safe like a writer
                with h5py.File(tmp, "w") as j:
                    j.attrs.update({k: meta[k] for k in ("fingerprint", "config", "dim", "dtype", "compute")})
                    j.attrs["format"] = _JOURNAL_FORMAT
                    j.attrs["format_version"] = FORMAT_VERSION
                    j.create_dataset("ids", data=ids.astype(object), dtype=_str_dtype())
                    j.create_dataset("embeddings", data=X.astype(str(meta["dtype"])))
                seq = max((int(p.stem) for p in dest._journal_files() if p.stem.isdigit()), default=0) + 1
                _fsync_file(tmp)
                staged = dest.journal_dir / f"{seq:08d}.h5"
                os.replace(tmp, staged)
                try:
                    dest._compact_locked()
                except BaseException:
                    staged.unlink(missing_ok=True)  # a refused shard leaves the destination as it was
                    raise
    return dest
