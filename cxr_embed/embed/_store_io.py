"""Low-level, verified reading and safe writing for :mod:`cxr_embed.embed.store`.

Everything the store reads back goes through these helpers: HDF5 errors become
:class:`~cxr_embed.StoreCorruptError` naming the file and the fix, lengths are checked, and the
SHA-256 digests the store records (format version 2) are recomputed and compared:

* per group, an ``attrs_sha256`` attribute over its identity attributes (fingerprint, config, dim,
  dtype, count, compute);
* per group, a ``segments`` dataset (fletcher32-checked) with one record per committed run of rows
  ``(start, stop, ids_sha256, rows_sha256)``; ``ids`` are variable-length strings, which HDF5
  cannot checksum, so their digest is the store's own;
* per journal file, the same three digests as attributes.

Files the store creates beside the main file (lock, journal batches, temporary copies) are
created with ``O_NOFOLLOW`` and, for new files, ``O_EXCL``: a symlink planted at one of those names
is refused, never followed. This module knows no model code (like the store itself).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np

from .._utils import stable_json
from .._version import __version__
from ..exceptions import (CxrEmbedError, FingerprintMismatchError, StoreCorruptError, StoreError, StoreInputError,
                          StoreWriteError)

__all__: list[str] = []

FORMAT = "cxr_embed.embeddings"
FORMAT_VERSION = 2  # 2: SHA-256 segments, attrs_sha256, fletcher32; 1 (no digests) is still read
JOURNAL_FORMAT = "cxr_embed.journal"
GROUP = "embeddings"

_CHUNK_BYTES = 1 << 20  # about 1 MiB per chunk of embeddings
SEGMENT_DTYPE = np.dtype([("start", "<i8"), ("stop", "<i8"), ("ids_sha256", "S64"), ("rows_sha256", "S64")])
#: group / journal attributes covered by ``attrs_sha256``
IDENTITY_ATTRS = ("fingerprint", "config", "dim", "dtype", "count", "compute")


def h5py():
    import h5py as _h5py  # a hard dependency; imported late so that importing cxr_embed stays cheap

    return _h5py


def str_dtype():
    return h5py().string_dtype(encoding="utf-8")


def chunk_rows(dim: int, itemsize: int) -> int:
    return int(max(1, min(65536, _CHUNK_BYTES // max(1, dim * itemsize))))


def decode(values) -> np.ndarray:
    out = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    return np.asarray(out, dtype=object).astype(str) if out else np.asarray([], dtype=str)


def attr_str(value) -> str | None:
    """An HDF5 string attribute as str (h5py returns str or bytes depending on how it was written)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return attr_str(value.item())
    return str(value)


# ------------------------------------------------------------------------- digests
def ids_digest(ids) -> str:
    """SHA-256 of a sequence of ids (JSON list, UTF-8): unambiguous for any strings."""
    return hashlib.sha256(json.dumps([str(i) for i in ids], ensure_ascii=False).encode("utf-8")).hexdigest()


def rows_digest(X: np.ndarray, dtype: str) -> str:
    """SHA-256 of rows in their stored dtype, little-endian, C order."""
    arr = np.ascontiguousarray(np.asarray(X).astype(np.dtype(dtype).newbyteorder("<"), copy=False))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return _plain(value.item()) if value.shape == () else [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def attrs_digest(attrs) -> str:
    """SHA-256 of the identity attributes of a group or journal file (absent ones count as null)."""
    values = {k: _plain(attrs.get(k)) for k in IDENTITY_ATTRS}
    for k in ("dim", "count"):
        if values[k] is not None:
            values[k] = int(values[k])
    return hashlib.sha256(stable_json(values).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------- errors
def repair_hint(store_path) -> str:
    return (f"fix: run `cxr-embed store verify {store_path}` to see what is damaged, then "
            f"`cxr-embed store repair {store_path}` to keep every intact row (dropped rows are recomputed "
            "by the next extract), or re-extract into a new store")


def journal_hint(store_path, journal_file) -> str:
    return (f"fix: run `cxr-embed store repair {store_path}` to move the damaged batch aside (its rows are "
            f"recomputed by the next extract), or delete {journal_file}")


@contextlib.contextmanager
def reading(path, store_path, *, journal: bool = False):
    """Turn any low-level failure while reading ``path`` into :class:`StoreCorruptError`.

    ``FileNotFoundError`` passes through (a journal file compacted away under a reader is retried).
    """
    try:
        yield
    except (CxrEmbedError, FileNotFoundError):
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError,
            UnicodeDecodeError) as e:
        hint = journal_hint(store_path, path) if journal else repair_hint(store_path)
        what = "journal batch" if journal else "embedding store"
        raise StoreCorruptError(f"{path}: damaged {what}, reading it failed ({type(e).__name__}: {e}); {hint}") from e


@contextlib.contextmanager
def writing(path, store_path, what: str, *, cleanup=()):
    """Turn a failed write (disk full, I/O error, HDF5 error) into :class:`StoreWriteError`.

    The temporary files in ``cleanup`` are removed; committed rows are untouched.
    """
    try:
        yield
    except CxrEmbedError:
        for p in cleanup:
            with contextlib.suppress(OSError):
                Path(p).unlink(missing_ok=True)
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        for p in cleanup:
            with contextlib.suppress(OSError):
                Path(p).unlink(missing_ok=True)
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        cause = "the disk is full" if full else f"{type(e).__name__}: {e}"
        raise StoreWriteError(
            f"{store_path}: {what} failed while writing {path} ({cause}); every row committed before is intact; "
            "fix: free disk space (or move the store and its .journal folder to a larger disk) and resume the "
            "same extraction, which computes only the missing rows"
        ) from e


# ------------------------------------------------------------------------- safe files
def refuse_symlink(path: Path, store_path, what: str) -> None:
    """Raise :class:`StoreError` when ``path`` exists and is a symlink or not of the expected kind."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(
            f"{path}: the store's {what} is a symbolic link (to {os.readlink(path)!r}); cxr_embed never follows "
            f"a link it did not create, because writing through it would overwrite another file; fix: remove "
            f"the link {path} (it is not part of the store {store_path})")


def create_exclusive(path: Path, store_path, what: str) -> None:
    """Create an empty file at ``path``; refuse if anything (a file, a planted symlink) is there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError as e:
        refuse_symlink(path, store_path, what)
        raise StoreError(f"{path}: the store's {what} already exists; fix: remove it if no writer is running "
                         f"(it is a leftover of {store_path})") from e
    os.close(fd)


def write_new_file(path: Path, data, store_path, what: str) -> None:
    """Write ``data`` to a new file at ``path`` (``O_EXCL | O_NOFOLLOW``) and fsync it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError as e:
        refuse_symlink(path, store_path, what)
        raise StoreError(f"{path}: the store's {what} already exists; fix: remove it if no writer is running") from e
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def check_free_space(store_path: Path, needed: int, what: str) -> None:
    """Raise :class:`StoreWriteError` before writing when the store's disk has less than ``needed`` bytes free."""
    try:
        free = shutil.disk_usage(store_path.parent).free
    except OSError:  # pragma: no cover - unknown: let the write itself tell
        return
    if free < needed:
        raise StoreWriteError(
            f"{store_path}: {what} needs about {needed / 2**20:.1f} MiB but the disk has {free / 2**20:.1f} MiB free "
            "(the disk is full); every row committed before is intact (the journal keeps the rows not yet "
            "compacted); fix: free disk space (or move the store and its .journal folder to a larger disk) and "
            "resume the same extraction, which computes only the missing rows")


def open_lock(path: Path, store_path) -> int:
    """File descriptor of the lock file, opened without following a symlink; a regular file only."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_symlink(path, store_path, "lock file")
        raise StoreError(f"{path}: cannot open the store's lock file ({e}); fix: check the permissions of "
                         f"{path.parent}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{path}: the store's lock file is not a regular file; fix: remove it (it is not part of "
                         f"the store {store_path})")
    return fd


def check_dir(path: Path, store_path, what: str) -> None:
    """Refuse a symlinked or non-directory journal / quarantine folder."""
    refuse_symlink(path, store_path, what)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: the store's {what} should be a folder but is a file; fix: move it away")


def fsync_dir(path: Path) -> None:
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


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------- chunked reads
def read_ids(ds) -> np.ndarray:
    n = ds.shape[0]
    step = max(1, ds.chunks[0] if ds.chunks else 65536)
    parts = [decode(ds[i : i + step]) for i in range(0, n, step)]
    return np.concatenate(parts) if parts else np.asarray([], dtype=str)


def read_rows(ds) -> np.ndarray:
    n, dim = ds.shape
    out = np.empty((n, dim), np.float32)
    step = max(1, ds.chunks[0] if ds.chunks else chunk_rows(dim, 4))
    for i in range(0, n, step):
        out[i : i + step] = ds[i : i + step]
    return out


def read_selected(ds, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (increasing) of a 2-D dataset, reading only the chunks that hold them."""
    dim = ds.shape[1]
    out = np.empty((rows.size, dim), np.float32)
    if rows.size == 0:
        return out
    step = max(1, ds.chunks[0] if ds.chunks else chunk_rows(dim, 4))
    blocks = rows // step  # increasing, so each block's rows are one contiguous run
    cuts = np.flatnonzero(np.diff(blocks)) + 1
    for sel in np.split(np.arange(rows.size), cuts):
        start = int(blocks[sel[0]]) * step
        block = ds[start : start + step]
        out[sel] = block[rows[sel] - start]
    return out


# ------------------------------------------------------------------------- verification
def check_shapes(path, g, store_path) -> int:
    """Number of rows of a group or journal file whose ``ids``, ``embeddings`` and count agree."""
    if "ids" not in g or "embeddings" not in g:
        raise StoreCorruptError(f"{path}: group {g.name!r} lacks its ids or embeddings dataset; "
                                f"{repair_hint(store_path)}")
    ids, emb = g["ids"], g["embeddings"]
    if len(ids.shape) != 1 or len(emb.shape) != 2:
        raise StoreCorruptError(f"{path}: group {g.name!r} has ids of shape {ids.shape} and embeddings of shape "
                                f"{emb.shape}, expected (n,) and (n, dim); {repair_hint(store_path)}")
    n = ids.shape[0]
    count = g.attrs.get("count")
    dim = g.attrs.get("dim")
    if emb.shape[0] != n or (count is not None and int(count) != n):
        raise StoreCorruptError(
            f"{path}: group {g.name!r} holds {n} ids but {emb.shape[0]} embedding rows (count attribute "
            f"{count}); ids and rows would be misaligned, refusing to read them; {repair_hint(store_path)}")
    if dim is not None and int(dim) != emb.shape[1]:
        raise StoreCorruptError(f"{path}: group {g.name!r} says dim {dim} but its embeddings have {emb.shape[1]} "
                                f"columns; {repair_hint(store_path)}")
    return int(n)


def check_attrs(path, g, store_path, *, journal: bool = False, required: bool = False) -> None:
    """Compare ``attrs_sha256`` with the identity attributes; ``required`` for format 2 (else skipped if absent)."""
    recorded = attr_str(g.attrs.get("attrs_sha256"))
    hint = journal_hint(store_path, path) if journal else repair_hint(store_path)
    if recorded is None and required:
        raise StoreCorruptError(f"{path}: {g.name!r} lacks its attrs_sha256 checksum (format version 2 records "
                                f"it); {hint}")
    if recorded is not None and recorded != attrs_digest(g.attrs):
        raise StoreCorruptError(f"{path}: the attributes of {g.name!r} (fingerprint, config, dim, dtype, count, "
                                f"compute) do not match their recorded SHA-256: they were altered or damaged; {hint}")


def read_segments(path, g, n: int, store_path) -> np.ndarray | None:
    """The group's segment table, checked to tile ``[0, n)`` exactly; ``None`` for a version-1 group."""
    if "segments" not in g:
        return None
    seg = g["segments"][()]
    if seg.dtype.names != SEGMENT_DTYPE.names:
        raise StoreCorruptError(f"{path}: group {g.name!r} has a malformed segments table; {repair_hint(store_path)}")
    pos = 0
    for s in seg:
        if int(s["start"]) != pos or int(s["stop"]) <= pos:
            break
        pos = int(s["stop"])
    if pos != n:
        raise StoreCorruptError(f"{path}: group {g.name!r}: its checksum segments cover rows [0, {pos}) of {n} "
                                f"(they must cover every row exactly once); {repair_hint(store_path)}")
    return seg


def check_ids(path, g, ids: np.ndarray, seg, store_path) -> None:
    for s in seg if seg is not None else ():
        a, b = int(s["start"]), int(s["stop"])
        if ids_digest(ids[a:b].tolist()) != s["ids_sha256"].decode():
            raise StoreCorruptError(f"{path}: ids of rows {a}-{b} of group {g.name!r} do not match their recorded "
                                    f"SHA-256; {repair_hint(store_path)}")


def check_rows(path, g, X: np.ndarray, dtype: str, seg, store_path) -> None:
    for s in seg if seg is not None else ():
        a, b = int(s["start"]), int(s["stop"])
        if rows_digest(X[a:b], dtype) != s["rows_sha256"].decode():
            raise StoreCorruptError(f"{path}: embeddings of rows {a}-{b} of group {g.name!r} do not match their "
                                    f"recorded SHA-256; {repair_hint(store_path)}")


def check_journal_digests(path, j, ids: np.ndarray, X: np.ndarray | None, store_path) -> None:
    rec_ids = attr_str(j.attrs.get("ids_sha256"))
    try:
        version = int(j.attrs.get("format_version", 1))
    except (TypeError, ValueError):
        version = 0
    if version >= 2 and (rec_ids is None or j.attrs.get("rows_sha256") is None):
        raise StoreCorruptError(f"{path}: journal batch of format version {version} lacks its ids/rows checksums; "
                                f"{journal_hint(store_path, path)}")
    if rec_ids is not None and rec_ids != ids_digest(ids.tolist()):
        raise StoreCorruptError(f"{path}: the ids of this journal batch do not match their recorded SHA-256; "
                                f"{journal_hint(store_path, path)}")
    rec_rows = attr_str(j.attrs.get("rows_sha256"))
    if X is not None and rec_rows is not None and rec_rows != rows_digest(X, attr_str(j.attrs.get("dtype"))):
        raise StoreCorruptError(f"{path}: the embeddings of this journal batch do not match their recorded SHA-256; "
                                f"{journal_hint(store_path, path)}")


# ------------------------------------------------------------------------- identity and provenance
def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def root_attrs(f, *, new: bool) -> None:
    stamp = now()
    if new:
        f.attrs["format"] = FORMAT
        f.attrs["created"] = stamp
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["library_version"] = __version__
    tf = sys.modules.get("tensorflow")
    if tf is not None and getattr(tf, "__version__", None):
        f.attrs["tensorflow_version"] = str(tf.__version__)
    f.attrs["updated"] = stamp


def as_identity(backbone_or_fingerprint) -> tuple[str, str | None, int | None]:
    """(fingerprint, config JSON or None, dim or None) of a backbone or a fingerprint string."""
    if isinstance(backbone_or_fingerprint, str):
        return backbone_or_fingerprint, None, None
    try:
        fp = str(backbone_or_fingerprint.fingerprint)
    except AttributeError as e:
        raise StoreInputError(
            "expected a Backbone (an object with .fingerprint, .config and .dim) or a fingerprint string, "
            f"got {type(backbone_or_fingerprint).__name__}"
        ) from e
    config = getattr(backbone_or_fingerprint, "config", None)
    dim = getattr(backbone_or_fingerprint, "dim", None)
    return fp, (stable_json(config) if config is not None else None), (int(dim) if dim is not None else None)


def check_input_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise StoreInputError(f"ids must be a 1-D sequence of strings, got shape {arr.shape}")
    out = np.asarray([str(i) for i in arr.tolist()], dtype=object).astype(str) if arr.size else np.asarray([], str)
    bad = [i for i in out.tolist() if not i or "\x00" in i]
    if bad:
        raise StoreInputError(f"ids must be non-empty strings without NUL characters (HDF5 cuts a string at NUL), "
                              f"got {bad[:5]!r}; fix: clean the image ids of the manifest")
    return out


# Config entries that describe where a backbone came from, not which function it is: a Keras
# upgrade or a moved weights file keeps the fingerprint (architecture and weight *content*), so
# they must not lock a store. They stay recorded in the group's config.
PROVENANCE_KEYS = ("keras_version", "weights")


def identity_config(config) -> str:
    """Canonical JSON of a backbone config without its provenance keys (``PROVENANCE_KEYS``)."""
    value = json.loads(config) if isinstance(config, (str, bytes)) else config
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in PROVENANCE_KEYS}
    return stable_json(value)


def compute_list(attrs) -> list[dict]:
    """The ``compute`` provenance of a group or journal batch: a list of dicts (possibly empty)."""
    raw = attr_str(attrs.get("compute"))
    if raw is None:
        return []
    value = json.loads(raw)
    return [value] if isinstance(value, dict) else list(value or [])


def union_compute(*lists) -> list[dict]:
    out, seen = [], set()
    for lst in lists:
        for item in lst:
            key = stable_json(item)
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


def check_group_identity(path, attrs, fingerprint: str, config: str | None, dim: int | None) -> None:
    stored_fp = attr_str(attrs.get("fingerprint"))
    if stored_fp != fingerprint:
        raise FingerprintMismatchError(
            f"{path}: group for fingerprint {fingerprint!r} holds embeddings stamped with fingerprint "
            f"{stored_fp!r}; the store is inconsistent, refusing to mix them; fix: extract into a new store"
        )
    if config is not None and identity_config(attr_str(attrs.get("config")) or "null") != identity_config(config):
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


# ------------------------------------------------------------------------- appending verified rows
def new_group(root, fp: str, attrs, dim: int, dtype: str, compression):
    g = root.create_group(fp)
    g.attrs.update({"fingerprint": fp, "config": attr_str(attrs["config"]), "dim": dim, "dtype": dtype, "count": 0,
                    "created": now()})
    rows = chunk_rows(dim, np.dtype(dtype).itemsize)
    g.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=str_dtype(), chunks=(max(rows, 1024),))
    g.create_dataset("embeddings", shape=(0, dim), maxshape=(None, dim), dtype=dtype, chunks=(rows, dim),
                     compression=compression, shuffle=compression is not None, fletcher32=True)
    g.create_dataset("segments", shape=(0,), maxshape=(None,), dtype=SEGMENT_DTYPE, chunks=(256,), fletcher32=True)
    return g


def add_segment(g, start: int, ids, X, dtype: str) -> None:
    seg = g["segments"]
    m = seg.shape[0]
    seg.resize((m + 1,))
    seg[m] = (start, start + len(ids), ids_digest(list(ids)).encode(), rows_digest(X, dtype).encode())


def ensure_segments(g, path, store_path) -> None:
    """Give a format-1 group (no digests) a checksum segment over its current rows, after reading them all."""
    if "segments" in g:
        return
    with reading(path, store_path):
        n = check_shapes(path, g, store_path)
        ids = read_ids(g["ids"])
        X = read_rows(g["embeddings"])
    g.create_dataset("segments", shape=(0,), maxshape=(None,), dtype=SEGMENT_DTYPE, chunks=(256,), fletcher32=True)
    if n:
        add_segment(g, 0, ids, X, attr_str(g.attrs["dtype"]))
    g.attrs["attrs_sha256"] = attrs_digest(g.attrs)


def append_rows(f, attrs, ids: np.ndarray, X: np.ndarray, compression, *, source, store_path) -> int:
    """Append verified rows (of a journal batch or a shard's group) to file ``f``; dedupe identical rows."""
    fp = attr_str(attrs["fingerprint"])
    dim = int(attrs["dim"])
    dtype = attr_str(attrs["dtype"])
    root = f.require_group(GROUP)
    g = root.get(fp)
    if g is None:
        g = new_group(root, fp, attrs, dim, dtype, compression)
    else:
        check_group_identity(source, g.attrs, fp, stable_json(json.loads(attr_str(attrs["config"]))),
                                             dim)
        if attr_str(g.attrs["dtype"]) != dtype:
            raise StoreError(f"{source}: rows of dtype {dtype} cannot join group {fp!r} stored as {g.attrs['dtype']}")
    with reading(store_path, store_path):
        n0 = check_shapes(store_path, g, store_path)
        old_ids = read_ids(g["ids"])
    index = {k: i for i, k in enumerate(old_ids.tolist())}
    keep = np.ones(ids.size, bool)
    seen: dict[str, int] = {}
    old_X_ds = g["embeddings"]
    for i, k in enumerate(ids.tolist()):
        if k in index or k in seen:
            with reading(store_path, store_path):
                other = np.asarray(old_X_ds[index[k]] if k in index else X[seen[k]], dtype=dtype)
            if other.tobytes() != np.asarray(X[i], dtype=dtype).tobytes():
                raise StoreError(
                    f"{source}: id {k!r} of fingerprint {fp!r} is stored twice with different embedding bits; "
                    f"refusing to merge it into {store_path}, which is left unchanged; fix: re-extract one of the shards"
                )
            keep[i] = False
        else:
            seen[k] = i
    ids, X = ids[keep], X[keep]
    n1 = n0 + ids.size
    if ids.size:
        g["ids"].resize((n1,))
        g["embeddings"].resize((n1, dim))
        step = g["embeddings"].chunks[0]
        for i in range(0, ids.size, step):
            g["ids"][n0 + i : n0 + i + step] = ids[i : i + step].astype(object)
            g["embeddings"][n0 + i : n0 + i + step] = X[i : i + step].astype(dtype)
        add_segment(g, n0, ids, X, dtype)
    computes = union_compute(compute_list(g.attrs), compute_list(attrs))
    if computes:
        g.attrs["compute"] = stable_json(computes)
    g.attrs["count"] = n1
    g.attrs["updated"] = now()
    g.attrs["attrs_sha256"] = attrs_digest(g.attrs)
    return int(ids.size)


