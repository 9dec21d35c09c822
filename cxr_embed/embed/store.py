"""Self-describing, crash-safe HDF5 cache of embeddings: one group per backbone fingerprint.

Layout of the store file (``store.h5``)::

    /                      attrs: format="cxr_embed.embeddings", format_version, library_version,
                                  tensorflow_version (when known), created, updated
    /embeddings/<fingerprint>/
                           attrs: fingerprint, config (the backbone's full config as JSON),
                                  dim, dtype, count, compute, created, updated, attrs_sha256
        ids                (n,) variable-length UTF-8 strings, chunked, resizable
        embeddings         (n, dim) float32 or float16, chunked, compressed, fletcher32, resizable on axis 0
        segments           (m,) records (start, stop, ids_sha256, rows_sha256), one per committed run

Integrity (format version 2). Everything read back is verified: HDF5 errors, ids and rows whose
lengths disagree, the SHA-256 digests of each committed run of ids and rows (``segments``), of the
identity attributes (``attrs_sha256``) and of every journal batch, and HDF5's fletcher32 checksum
of each chunk of embeddings. A failure raises :class:`~cxr_embed.StoreCorruptError` naming the file
and the fix; :meth:`EmbeddingStore.verify` reports every problem at once and
:meth:`EmbeddingStore.repair` keeps every intact row. Stores of format version 1 (no digests) stay
readable, verified as far as they can be, and are upgraded by the next compaction.

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
may remain and is harmless. The lock, journal batches and temporary copies are opened with
``O_NOFOLLOW`` (new files also ``O_EXCL``): a symlink planted at one of those names is refused. A second writer, in another process or in the same one, gets
:class:`~cxr_embed.StoreLockedError`. Readers take no lock.
"""
from __future__ import annotations

import contextlib
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
from ..exceptions import (MissingIdsError, StoreCorruptError, StoreError,
                          StoreInputError, StoreLockedError)
from ._store_io import (FORMAT, FORMAT_VERSION, attr_str, attrs_digest, check_attrs, check_dir, check_group_identity,
                        check_free_space, check_ids, ids_digest, rows_digest, str_dtype, write_new_file,
                        check_journal_digests, check_rows, check_shapes, create_exclusive, fsync_dir, fsync_file, h5py,
                        journal_hint, open_lock, read_ids, read_rows, read_segments, reading, refuse_symlink,
                        repair_hint, writing)
from ._store_io import GROUP as _GROUP
from ._store_io import as_identity as _as_identity
from ._store_io import check_input_ids as _check_ids
from ._store_io import JOURNAL_FORMAT as _JOURNAL_FORMAT
from ._store_io import append_rows as _append_rows
from ._store_io import compute_list as _compute_list
from ._store_io import ensure_segments as _ensure_segments
from ._store_io import now as _now
from ._store_io import root_attrs as _root_attrs
from ._store_io import union_compute as _union_compute
from ._store_io import read_selected as _read_selected  # noqa: F401  (used by the tests)

__all__ = ["EmbeddingStore", "StoreWriter", "merge", "FORMAT", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "float16")
_COMPRESSIONS = ("gzip", "lzf", None)


class EmbeddingStore:
    """A self-describing HDF5 file of embeddings, one group per backbone fingerprint.

    Parameters
    ----------
    path : str or Path
        The HDF5 file. With ``mode="a"`` it is created by the first writer; with ``mode="r"``
        it (or its journal of committed batches, after a first run was killed) must exist and
        writing is refused.
    mode : {"a", "r"}
        Append (read and write) or read-only.
    compression : {"gzip", "lzf", None}
        Compression of the ``embeddings`` datasets created in this store.

    Notes
    -----
    Embeddings are keyed by the backbone's ``fingerprint``: a group written by one backbone
    configuration is never mixed with another's. Reading checks the file's ``format`` attribute
    and the group's stored fingerprint and config against the backbone asked for, and verifies
    what it reads (see the module docstring); damage raises :class:`~cxr_embed.StoreCorruptError`.

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
    >>> store.verify().ok
    True
    """

    def __init__(self, path, mode: str = "a", *, compression: str | None = "gzip"):
        if mode not in ("a", "r"):
            raise StoreInputError(f"mode must be 'a' (append) or 'r' (read-only), got {mode!r}")
        if compression not in _COMPRESSIONS:
            raise StoreInputError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
        self.path = Path(path)
        self.mode = mode
        self.compression = compression
        if mode == "r" and not self.path.exists() and not self._journal_files():
            raise StoreError(f"{self.path}: no such embedding store (and no journal of committed batches at "
                             f"{self.journal_dir}); fix: check the path or open with mode='a' to create it")
        if self.path.exists() or os.path.islink(self.path):
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

    @property
    def quarantine_dir(self) -> Path:
        """Where :meth:`repair` moves damaged journal batches and the damaged main file (``<path>.quarantine``)."""
        return self.path.with_name(self.path.name + ".quarantine")

    def _journal_files(self) -> list[Path]:
        check_dir(self.journal_dir, self.path, "journal folder")
        if not self.journal_dir.is_dir():
            return []
        return sorted(p for p in self.journal_dir.glob("*.h5") if not p.name.startswith("."))

    # ----------------------------------------------------------------- checks
    def _check_format(self) -> int:
        """Check the main file is a store this library reads; return its format version."""
        if not self.path.is_file():
            raise StoreError(f"{self.path}: not a regular file (a folder, a device, a pipe or a broken link); "
                             "fix: point to an HDF5 store written by cxr_embed")
        try:
            with h5py().File(self.path, "r") as f:
                return self._check_root(f)
        except (OSError, RuntimeError, ValueError) as e:
            if isinstance(e, StoreError):
                raise
            with open(self.path, "rb") as fh:
                signature = fh.read(8)
            if signature == b"\x89HDF\r\n\x1a\n":
                raise StoreCorruptError(
                    f"{self.path}: an HDF5 file too damaged to open ({e}), e.g. truncated; nothing in it can be "
                    "verified; fix: move it away and extract again into a new store (rows still in its .journal "
                    "folder are kept by the new run)") from e
            raise StoreError(f"{self.path}: not an HDF5 file ({e}); fix: point to a store written by "
                             "cxr_embed, or choose a new path (this file is never overwritten)") from e

    def _check_root(self, f) -> int:
        fmt = attr_str(f.attrs.get("format"))
        ver = f.attrs.get("format_version")
        if fmt != FORMAT:
            raise StoreError(
                f"{self.path}: expected an HDF5 file with root attribute format={FORMAT!r}, found {fmt!r}; "
                "fix: this is not a cxr_embed embedding store, choose another path"
            )
        try:
            version = int(ver)
        except (TypeError, ValueError) as e:
            raise StoreCorruptError(f"{self.path}: format_version {ver!r} is not an integer; "
                                    f"{repair_hint(self.path)}") from e
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: store format_version {version} is newer than this library reads ({FORMAT_VERSION}); "
                "fix: upgrade cxr_embed"
            )
        if version < 1:
            raise StoreCorruptError(f"{self.path}: format_version {version} is not a version cxr_embed ever wrote; "
                                    f"{repair_hint(self.path)}")
        return version

    # ---------------------------------------------------------------- reading
    def _read_source(self, src: Path, fingerprint: str, config, dim, *, with_data: bool, want_index=None,
                     journal: bool):
        """Verified (ids, data, attrs) of one group of the main file or one journal batch, or None if absent.

        ``data`` is None, all rows (float32) or, with ``want_index``, ``(ids_found, rows_found)``.
        """
        with reading(src, self.path, journal=journal):
            if journal:
                refuse_symlink(src, self.path, "journal batch")
            with h5py().File(src, "r") as f:
                if journal:
                    g = f["/"]
                    if attr_str(g.attrs.get("format")) != _JOURNAL_FORMAT:
                        raise StoreCorruptError(f"{src}: not a cxr_embed journal batch (format "
                                                f"{g.attrs.get('format')!r}); {journal_hint(self.path, src)}")
                    if attr_str(g.attrs.get("fingerprint")) != fingerprint:
                        return None
                    seg = None
                else:
                    version = self._check_root(f)
                    g = f.get(f"{_GROUP}/{fingerprint}")
                    if g is None:
                        return None
                check_group_identity(src, g.attrs, fingerprint, config, dim)
                if journal:
                    version = int(g.attrs.get("format_version", 1)) if str(g.attrs.get("format_version", 1)).isdigit() else 0
                    if version not in (1, 2):
                        raise StoreCorruptError(f"{src}: journal batch of unknown format_version "
                                                f"{g.attrs.get('format_version')!r}; {journal_hint(self.path, src)}")
                check_attrs(src, g, self.path, journal=journal, required=version >= 2)
                n = check_shapes(src, g, self.path)
                if not journal:
                    seg = read_segments(src, g, n, self.path)
                    if seg is None and version >= 2:
                        raise StoreCorruptError(f"{src}: group {g.name!r} lacks its checksum segments (format "
                                                f"version {version} records them); {repair_hint(self.path)}")
                ids = read_ids(g["ids"])
                if np.unique(ids).size != ids.size:
                    raise StoreCorruptError(f"{src}: group {g.name!r} holds an id twice; "
                                            + (journal_hint(self.path, src) if journal else repair_hint(self.path)))
                dtype = attr_str(g.attrs.get("dtype"))
                if journal:
                    check_journal_digests(src, g, ids, None, self.path)
                else:
                    check_ids(src, g, ids, seg, self.path)
                data = None
                if with_data and (want_index is None or journal):
                    data = read_rows(g["embeddings"])
                    if journal:
                        check_journal_digests(src, g, ids, data, self.path)
                    else:
                        check_rows(src, g, data, dtype, seg, self.path)
                    if want_index is not None:
                        sel = np.asarray([k in want_index for k in ids.tolist()], bool)
                        data = (ids[sel], data[sel])
                elif with_data:
                    rows = np.asarray([r for r, k in enumerate(ids.tolist()) if k in want_index], np.int64)
                    data = (ids[rows], _read_selected(g["embeddings"], rows))
                return ids, data, dict(g.attrs)

    def _gather(self, fingerprint: str, config: str | None, dim: int | None, *, with_data: bool,
                want: list[str] | None = None):
        """Ids (and optionally embeddings) in commit order: main file then journal, deduplicated.

        With ``want`` (unique ids), only the rows of those ids are read (chunk by chunk) and
        ``X`` is aligned to ``want``, with zeros where an id is absent; ``found`` says which.
        """
        want_index = None if want is None else {k: i for i, k in enumerate(want)}
        for _attempt in range(5):
            parts: list = []
            try:
                sources = [(self.path, False)] if self.path.exists() else []
                sources.extend((jp, True) for jp in self._journal_files())
                for src, journal in sources:
                    got = self._read_source(src, fingerprint, config, dim, with_data=with_data,
                                            want_index=want_index, journal=journal)
                    if got is not None:
                        parts.append((src, *got))
            except FileNotFoundError:
                continue  # a compaction removed a journal file under us: read again
            break
        else:  # pragma: no cover - five compactions in a row during one read
            raise StoreError(f"{self.path}: the store kept changing while being read; fix: retry when the writer is done")
        meta = dict(parts[0][3]) if parts else None
        if meta is not None:
            meta["compute"] = stable_json(_union_compute(*(_compute_list(p[3]) for p in parts)))
        d = int(meta["dim"]) if meta is not None else (dim or 0)
        ids = np.concatenate([p[1] for p in parts]) if parts else np.asarray([], dtype=str)
        # drop duplicates left by a compaction killed between rename and journal cleanup
        _, first = np.unique(ids, return_index=True)
        keep = np.sort(first) if first.size != ids.size else None
        X = None
        if with_data and want_index is None:
            X = np.concatenate([p[2] for p in parts]).astype(np.float32, copy=False) if parts else np.zeros((0, d), np.float32)
            if keep is not None:
                self._check_duplicate_bits(ids, X, keep, parts)
                X = X[keep]
        elif with_data:
            X = np.zeros((len(want_index), d), np.float32)
            found = np.zeros(len(want_index), bool)
            for src, _ids, (part_ids, part_X), _attrs in parts:
                for k, row in zip(part_ids.tolist(), part_X):
                    i = want_index[k]
                    if not found[i]:
                        X[i] = row
                        found[i] = True
                    elif X[i].tobytes() != np.asarray(row, np.float32).tobytes():
                        raise StoreCorruptError(f"{src}: id {k!r} is stored twice (main file and journal) with "
                                                f"different bits; {repair_hint(self.path)}")
            X = (X, found)
        if keep is not None:
            ids = ids[keep]
        return ids, X, meta

    def _check_duplicate_bits(self, ids, X, keep, parts) -> None:
        first = {k: i for i, k in zip(keep.tolist(), ids[keep].tolist())}
        for i, k in enumerate(ids.tolist()):
            if first[k] != i and X[first[k]].tobytes() != X[i].tobytes():
                raise StoreCorruptError(f"{self.path}: id {k!r} is stored twice (main file and journal) with "
                                        f"different bits; {repair_hint(self.path)}")

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
        StoreCorruptError
            What was read back is damaged (HDF5 error, checksum, lengths); the message names the
            file and the fix (``cxr-embed store verify`` / ``repair``).
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
        fps: list[str] = []
        if self.path.exists():
            with reading(self.path, self.path):
                with h5py().File(self.path, "r") as f:
                    self._check_root(f)
                    if _GROUP in f:
                        fps.extend(f[_GROUP].keys())
        for jp in self._journal_files():
            with contextlib.suppress(FileNotFoundError), reading(jp, self.path, journal=True):
                refuse_symlink(jp, self.path, "journal batch")
                with h5py().File(jp, "r") as j:
                    fp = attr_str(j.attrs.get("fingerprint"))
                    if fp and fp not in fps:
                        fps.append(fp)
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

        Raises
        ------
        StoreCorruptError
            Something read back is damaged (the message names the file and the fix).

        Examples
        --------
        >>> sorted(store.info()["backbones"])  # doctest: +SKIP
        ['3f2a...']
        """
        out: dict[str, Any] = {"path": str(self.path), "format": FORMAT, "backbones": {}}
        if self.path.exists():
            with reading(self.path, self.path):
                with h5py().File(self.path, "r") as f:
                    self._check_root(f)
                    for key in ("format_version", "library_version", "tensorflow_version", "created", "updated"):
                        if key in f.attrs:
                            v = f.attrs[key]
                            out[key] = attr_str(v) if isinstance(v, (bytes, str)) else v.item() if hasattr(v, "item") else v
        out["pending_journal_batches"] = len(self._journal_files())
        for fp in self.fingerprints():
            ids, _, meta = self._gather(fp, None, None, with_data=False)
            with reading(self.path, self.path):
                out["backbones"][fp] = {
                    "count": int(ids.size),
                    "dim": int(meta["dim"]),
                    "dtype": attr_str(meta["dtype"]),
                    "config": json.loads(attr_str(meta["config"])),
                    "compute": json.loads(attr_str(meta.get("compute")) or "[]"),
                    "created": attr_str(meta.get("created", "")),
                    "updated": attr_str(meta.get("updated", "")),
                }
        return out

    def verify(self):
        """Check every byte the store holds against its checksums; report, never raise for damage.

        Reads every group and journal batch completely: HDF5 errors, ids and rows whose lengths
        disagree, the SHA-256 digests of ids, rows and identity attributes (format version 2),
        fletcher32 chunk checksums, duplicate ids, symlinked lock or journal files.

        Returns
        -------
        StoreReport
            ``report.ok``, ``report.problems`` (one line each, naming the file), per-group and
            per-journal-batch details; ``str(report)`` is readable, ``report.to_dict()`` JSON-able.

        Raises
        ------
        StoreError
            The path is not a cxr_embed store at all (nothing to verify).

        Examples
        --------
        >>> report = store.verify()  # doctest: +SKIP
        >>> report.ok, report.problems  # doctest: +SKIP
        (True, [])
        """
        from ._store_check import verify_store

        return verify_store(self)

    def repair(self):
        """Keep every intact row: move damaged journal batches and groups aside, then compact.

        Damaged journal batches are moved into :attr:`quarantine_dir` (never deleted). In the main
        file, rows whose checksum segment fails (or, in a format-1 store, whose chunk cannot be read)
        and groups whose ids and rows disagree in length are dropped from a rewritten copy, which
        atomically replaces the file; the damaged original stays in :attr:`quarantine_dir`. The
        next ``extract`` recomputes whatever was dropped. Takes the writer lock.

        Returns
        -------
        StoreReport
            The verification after repair, with ``report.actions`` saying what was moved or dropped.

        Raises
        ------
        StoreError
            The store is read-only, locked by a writer, or its main file is not a readable store.

        Examples
        --------
        >>> store.repair().actions  # doctest: +SKIP
        ['moved damaged journal batch emb.h5.journal/00000003.h5 to emb.h5.quarantine/']
        """
        if self.mode == "r":
            raise StoreError(f"{self.path}: store opened read-only (mode='r'); fix: open with mode='a' to repair")
        if not os.path.lexists(self.path) and not self._journal_files():
            raise StoreError(f"{self.path}: no such embedding store (and no journal); nothing to repair; fix: check "
                             "the path")
        from ._store_check import repair_store

        return repair_store(self)

    def __repr__(self) -> str:
        try:
            parts = [f"{fp[:12]}: {b['count']} x {b['dim']} {b['dtype']}" for fp, b in self.info()["backbones"].items()]
        except StoreError as e:
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
            raise StoreInputError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        return StoreWriter(self, backbone, dtype)

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_lock(self.lock_path, self.path)
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

    def _clean_stale(self) -> None:
        jdir = self.journal_dir
        check_dir(jdir, self.path, "journal folder")
        for stale in jdir.glob(".*.tmp") if jdir.is_dir() else []:
            stale.unlink(missing_ok=True)  # a batch killed before its rename: never committed (unlink never follows)
        for stale in self.path.parent.glob(f".{self.path.name}.*.compact.tmp"):
            stale.unlink(missing_ok=True)  # a compaction killed before its rename

    def _rewrite(self, what: str, fill, *, new_bytes: int) -> None:
        """Copy the main file to a temporary sibling, ``fill(f)`` it, fsync and atomically replace the main file.

        Any failure leaves the main file exactly as it was (the copy is removed). The free space is
        checked first (copy plus ``new_bytes`` with a margin), so that a full disk is reported before
        HDF5 writes anything: HDF5 cannot always recover from a write that fails inside it.
        """
        size = self.path.stat().st_size if self.path.exists() else 0
        check_free_space(self.path, size + 2 * new_bytes + (256 << 10), what)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.compact.tmp")
        create_exclusive(tmp, self.path, "temporary copy")
        with writing(tmp, self.path, what, cleanup=[tmp]):
            if self.path.exists():
                self._check_format()
                shutil.copyfile(self.path, tmp)
            with h5py().File(tmp, "a") as f:
                _root_attrs(f, new="format" not in f.attrs)
                for fp in list(f[_GROUP].keys()) if _GROUP in f else []:
                    _ensure_segments(f[_GROUP][fp], tmp, self.path)  # format 1 -> 2
                fill(f)
            fsync_file(tmp)
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)

    def _compact_locked(self) -> None:
        self._clean_stale()
        journal = self._journal_files()
        if not journal:
            return

        def fill(f):
            for jp in journal:
                ids, X, attrs = self._read_journal(jp)
                _append_rows(f, attrs, ids, X, self.compression, source=jp, store_path=self.path)

        self._rewrite("compacting the journal", fill, new_bytes=sum(jp.stat().st_size for jp in journal))
        for jp in journal:
            jp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.journal_dir.rmdir()
        logger.info("compacted %d journal batches into %s", len(journal), self.path)

    def _read_journal(self, jp: Path):
        """Verified (ids, rows, attrs) of one journal batch, whatever its fingerprint."""
        with reading(jp, self.path, journal=True):
            refuse_symlink(jp, self.path, "journal batch")
            with h5py().File(jp, "r") as j:
                fp = attr_str(j.attrs.get("fingerprint"))
            if not fp:
                raise StoreCorruptError(f"{jp}: journal batch without a fingerprint; {journal_hint(self.path, jp)}")
            ids, X, attrs = self._read_source(jp, fp, None, None, with_data=True, journal=True)
        return ids, X, attrs


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
            raise StoreInputError("writer() needs a Backbone with .fingerprint, .config and .dim, not a fingerprint "
                                  "string")
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
                stored = attr_str(meta["dtype"])
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
        StoreInputError
            Shapes disagree, values are not finite, or an id is duplicated, empty or holds NUL
            (also a ``ValueError``).
        StoreWriteError
            The batch could not be written (disk full, I/O error); earlier batches are intact.

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
            raise StoreInputError(f"expected X of shape ({ids.size}, {self.dim}) for {ids.size} ids, got {X.shape}")
        if X.dtype.kind not in "fiu" or not np.all(np.isfinite(X)):
            raise StoreInputError("embeddings contain NaN or inf (or are not numbers); refusing to store them")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise StoreInputError(f"duplicate ids within the batch: {uniq[counts > 1][:10].tolist()}")
        dup = [i for i in ids.tolist() if i in self.existing]
        if dup:
            raise StoreInputError(
                f"{self.store.path}: {len(dup)} ids are already stored for fingerprint {self.fingerprint!r}, "
                f"first ten: {dup[:10]}; fix: skip ids in writer.existing"
            )
        if ids.size == 0:
            return
        X = X.astype(self.dtype, copy=False)
        jdir = self.store.journal_dir
        check_dir(jdir, self.store.path, "journal folder")
        self._seq += 1
        final = jdir / f"{self._seq:08d}.h5"
        tmp = jdir / f".{self._seq:08d}.{uuid.uuid4().hex[:6]}.h5.tmp"
        import io

        buf = io.BytesIO()  # built in memory: a full disk fails in os.write, never inside HDF5
        with h5py().File(buf, "w") as j:
            j.attrs["format"] = _JOURNAL_FORMAT
            j.attrs["format_version"] = FORMAT_VERSION
            j.attrs["fingerprint"] = self.fingerprint
            j.attrs["config"] = self._config
            j.attrs["dim"] = self.dim
            j.attrs["dtype"] = self.dtype
            j.attrs["count"] = int(ids.size)
            j.attrs["created"] = _now()
            if isinstance(compute, dict) or self._compute is not None:  # compute= e.g. from a Ray worker
                j.attrs["compute"] = stable_json([compute]) if isinstance(compute, dict) else self._compute
            j.attrs["attrs_sha256"] = attrs_digest(j.attrs)
            j.attrs["ids_sha256"] = ids_digest(ids.tolist())
            j.attrs["rows_sha256"] = rows_digest(X, self.dtype)
            j.create_dataset("ids", data=ids.astype(object), dtype=str_dtype())
            j.create_dataset("embeddings", data=X)
        with writing(tmp, self.store.path, "committing a batch", cleanup=[tmp]):
            jdir.mkdir(exist_ok=True)
            write_new_file(tmp, buf.getbuffer(), self.store.path, "journal batch")
            refuse_symlink(final, self.store.path, "journal batch")
            os.replace(tmp, final)  # the commit point
            fsync_dir(jdir)
        self.existing.update(ids.tolist())
        self.n_appended += int(ids.size)

    def close(self) -> None:
        """Compact the journal into the main file and release the lock (idempotent).

        A failed compaction (disk full) raises :class:`~cxr_embed.StoreWriteError`; the rows stay
        committed in the journal, readable, and are compacted by the next writer.
        """
        if self._lock_cm is None:
            return
        try:
            self.store._compact_locked()
        finally:
            cm, self._lock_cm = self._lock_cm, None
            cm.__exit__(None, None, None)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def merge(stores: Iterable, into) -> EmbeddingStore:
    """Merge shards extracted on several machines into one store.

    Groups with the same fingerprint are concatenated (ids present in several shards with
    identical bits are kept once; different bits raise); different fingerprints stay separate
    groups. Every shard is read and verified first; the result is written to a temporary copy of
    ``into`` that atomically replaces it, so a refused merge or a kill leaves ``into`` exactly as
    it was.

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
    StoreCorruptError
        A shard (or ``into``) is damaged.
    FingerprintMismatchError
        Groups with one fingerprint disagree on config or dim.

    Examples
    --------
    >>> merged = merge(["shard0.h5", "shard1.h5"], "all.h5")  # doctest: +SKIP
    >>> merged.info()["backbones"]  # doctest: +SKIP
    """
    dest = into if isinstance(into, EmbeddingStore) else EmbeddingStore(into, mode="a")
    if dest.mode == "r":
        raise StoreError(f"{dest.path}: destination opened read-only; fix: open with mode='a'")
    shards = [s if isinstance(s, EmbeddingStore) else EmbeddingStore(s, mode="r") for s in stores]
    with dest._locked():
        dest._compact_locked()
        parts = []
        for shard in shards:
            if shard.path.resolve() == dest.path.resolve():
                continue
            for fp in shard.fingerprints():
                ids, X, meta = shard._gather(fp, None, None, with_data=True)
                parts.append((shard.path, ids, X, meta))
        if not parts:
            return dest

        def fill(f):
            for src, ids, X, meta in parts:
                _append_rows(f, meta, ids, X.astype(attr_str(meta["dtype"])), dest.compression, source=src,
                             store_path=dest.path)

        dest._rewrite("merging", fill, new_bytes=sum(int(X.nbytes) + 64 * len(ids) for _, ids, X, _ in parts))
    return dest
