"""Verification and repair of an :class:`~cxr_embed.EmbeddingStore` (``store.verify()``, ``store.repair()``).

``verify`` reads every group of the main file and every journal batch completely, through the
same verified reader as ``load`` (HDF5 errors, lengths, SHA-256 digests, fletcher32), and reports
every problem instead of stopping at the first. ``repair`` keeps every row it can prove intact:

* a journal batch that fails verification is moved to ``<store>.quarantine/`` (never deleted);
* in the main file, a group whose identity attributes fail their digest is dropped; otherwise each
  checksum segment whose ids and rows verify is kept (format 1 without segments: each chunk of rows
  that HDF5 can read, when ids and rows agree in length; a format-1 group whose lengths disagree is
  dropped, since nothing says which rows belong to which ids);
* the kept rows are written to a new file that atomically replaces the main file; the damaged
  original is kept (hard link) in the quarantine folder.

What is dropped is recomputed by the next ``extract`` (it computes only missing ids).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..exceptions import StoreCorruptError, StoreError, StoreLockedError
from ._store_io import (GROUP, append_rows, attr_str, attrs_digest, check_dir, check_free_space, create_exclusive,
                        decode, fsync_dir, fsync_file, h5py, ids_digest, read_ids, reading, refuse_symlink, root_attrs,
                        rows_digest, writing)

__all__ = ["StoreReport"]


@dataclass
class StoreReport:
    """What :meth:`EmbeddingStore.verify` (or ``repair``) found.

    Attributes
    ----------
    path : str
        The store's main file.
    ok : bool
        True when nothing is damaged.
    format_version : int or None
        Of the main file (None when only a journal exists).
    groups : dict
        ``{fingerprint: {"rows": int or None, "checked": str, "problems": [str]}}``; ``checked`` is
        ``"sha256"`` (format 2) or ``"readable"`` (format 1: no checksums; read and lengths only).
    journal : list of dict
        ``{"file", "rows", "problem"}`` per pending journal batch.
    problems : list of str
        One line per problem, each naming the file and the fix.
    actions : list of str
        What ``repair`` moved or dropped (empty for ``verify``).

    Examples
    --------
    >>> StoreReport(path="emb.h5").ok
    True
    """

    path: str
    ok: bool = True
    format_version: int | None = None
    groups: dict = field(default_factory=dict)
    journal: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    actions: list = field(default_factory=list)

    def add_problem(self, message: str) -> None:
        self.problems.append(message)
        self.ok = False

    def to_dict(self) -> dict:
        """JSON-able copy of the report."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"store {self.path}: {'OK' if self.ok else f'{len(self.problems)} problem(s)'}"
                 f" (format version {self.format_version})"]
        for fp, g in self.groups.items():
            state = "damaged" if g["problems"] else f"{g['rows']} rows verified ({g['checked']})"
            lines.append(f"  group {fp[:12]}: {state}")
        for j in self.journal:
            lines.append(f"  journal {Path(j['file']).name}: {j['problem'] or str(j['rows']) + ' rows verified'}")
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  repaired: {a}" for a in self.actions]
        return "\n".join(lines)


def verify_store(store) -> StoreReport:
    """Verify every group and journal batch of ``store``; see :meth:`EmbeddingStore.verify`."""
    report = StoreReport(path=str(store.path))
    for what, p in (("lock file", store.lock_path), ("journal folder", store.journal_dir)):
        try:
            refuse_symlink(p, store.path, what)
        except StoreError as e:
            report.add_problem(str(e))
    if os.path.isdir(store.lock_path) and not os.path.islink(store.lock_path):
        report.add_problem(f"{store.lock_path}: the store's lock file is a folder, so no writer can lock the store; "
                           "fix: remove it (it is not part of the store)")
    journal_ok = not report.problems
    fps: list[str] = []
    if store.path.exists() or os.path.islink(store.path):
        try:
            report.format_version = store._check_format()
            with reading(store.path, store.path), h5py().File(store.path, "r") as f:
                fps = list(f[GROUP].keys()) if GROUP in f else []
                legacy = {fp for fp in fps if "segments" not in f[GROUP][fp]}
        except StoreCorruptError as e:
            report.add_problem(str(e))
            fps, legacy = [], set()
        for fp in fps:
            entry = {"rows": None, "checked": "readable" if fp in legacy else "sha256", "problems": []}
            report.groups[fp] = entry
            try:
                ids, _, _ = store._read_source(store.path, fp, None, None, with_data=True, journal=False)
                entry["rows"] = int(ids.size)
            except StoreError as e:
                entry["problems"].append(str(e))
                report.add_problem(str(e))
    for jp in store._journal_files() if journal_ok else []:
        entry = {"file": str(jp), "rows": None, "problem": None}
        report.journal.append(entry)
        try:
            ids, _, _ = store._read_journal(jp)
            entry["rows"] = int(ids.size)
        except StoreError as e:
            entry["problem"] = str(e)
            report.add_problem(str(e))
    if report.ok:  # across sources: an id in the main file and the journal must have the same bits
        for fp in store.fingerprints():
            try:
                store._gather(fp, None, None, with_data=True)
            except StoreError as e:
                report.add_problem(str(e))
    return report


def _quarantine(store, path: Path, name: str) -> Path:
    qdir = store.quarantine_dir
    check_dir(qdir, store.path, "quarantine folder")
    qdir.mkdir(exist_ok=True)
    target = qdir / name
    if os.path.lexists(target):
        target = qdir / f"{name}.{uuid.uuid4().hex[:6]}"
    return target


def _salvage(store, g) -> tuple[list, list, list]:
    """(kept ids parts, kept rows parts, dropped descriptions) of one damaged group of the main file."""
    path = store.path
    if attr_str(g.attrs.get("attrs_sha256")) not in (None, attrs_digest(g.attrs)):
        return [], [], ["its attributes (fingerprint, config, dim, dtype) fail their checksum: whole group dropped"]
    ids_ds, emb = g.get("ids"), g.get("embeddings")
    if ids_ds is None or emb is None or len(emb.shape) != 2:
        return [], [], ["its ids or embeddings dataset is missing or malformed: whole group dropped"]
    dtype = attr_str(g.attrs.get("dtype"))
    n = min(ids_ds.shape[0], emb.shape[0])
    units: list[tuple[int, int, str | None, str | None]] = []
    try:
        seg = g["segments"][()] if "segments" in g else None
    except (OSError, RuntimeError, ValueError):
        seg = None
    if seg is not None:
        units = [(int(s["start"]), int(s["stop"]), s["ids_sha256"].decode(), s["rows_sha256"].decode()) for s in seg]
    elif ids_ds.shape[0] != emb.shape[0]:
        return [], [], [f"{ids_ds.shape[0]} ids but {emb.shape[0]} rows and no checksums to realign them: "
                        "whole group dropped"]
    else:
        step = emb.chunks[0] if emb.chunks else 1024
        units = [(a, min(a + step, n), None, None) for a in range(0, n, step)]
    kept_ids, kept_X, dropped = [], [], []
    for a, b, ids_sha, rows_sha in units:
        try:
            if not 0 <= a < b <= n:
                raise ValueError("segment outside the datasets")
            with reading(path, path):
                ids = decode(ids_ds[a:b])
                X = np.asarray(emb[a:b])
            if ids_sha is not None and (ids_digest(ids.tolist()) != ids_sha or rows_digest(X, dtype) != rows_sha):
                raise ValueError("checksum mismatch")
        except (StoreError, ValueError) as e:
            dropped.append(f"rows {a}-{b} ({e})")
            continue
        kept_ids.append(ids)
        kept_X.append(X)
    return kept_ids, kept_X, dropped


def repair_store(store) -> StoreReport:
    """Keep every intact row of ``store``; see :meth:`EmbeddingStore.repair`."""
    actions: list[str] = []
    with store._locked():
        store._clean_stale()
        for jp in store._journal_files():
            try:
                store._read_journal(jp)
            except StoreLockedError:  # pragma: no cover - cannot happen under our own lock
                raise
            except StoreError as e:
                target = _quarantine(store, jp, f"journal-{jp.name}")
                os.replace(jp, target)
                actions.append(f"moved damaged journal batch {jp} to {target} ({e})")
        if store.path.exists() or os.path.islink(store.path):
            _repair_main(store, actions)
        store._compact_locked()
    report = verify_store(store)
    report.actions = actions
    return report


def _repair_main(store, actions: list[str]) -> None:
    try:
        store._check_format()
    except StoreCorruptError:
        pass  # e.g. a damaged format_version: the groups may still be salvaged
    except StoreError as e:
        raise StoreError(f"{e}; `repair` only rewrites files it recognises as cxr_embed stores, this one is left "
                         "as it is") from e
    plan, damaged = [], False
    with reading(store.path, store.path), h5py().File(store.path, "r") as f:
        created = attr_str(f.attrs.get("created"))
        for fp in list(f[GROUP].keys()) if GROUP in f else []:
            try:
                store._read_source(store.path, fp, None, None, with_data=True, journal=False)
                ok = True
            except StoreError:
                ok, damaged = False, True
            g = f[GROUP][fp]
            if ok:
                ids_parts, x_parts, dropped = [read_ids(g["ids"])], [np.asarray(g["embeddings"][()])], []
            else:
                ids_parts, x_parts, dropped = _salvage(store, g)
            attrs = {k: g.attrs.get(k) for k in ("fingerprint", "config", "dim", "dtype", "compute")}
            if attr_str(attrs["fingerprint"]) != fp:
                ids_parts, x_parts, dropped = [], [], ["its fingerprint attribute disagrees with its name: dropped"]
            plan.append((fp, attrs, ids_parts, x_parts))
            actions += [f"group {fp[:12]}: dropped {d}" for d in dropped]
        try:
            int(f.attrs.get("format_version"))
        except (TypeError, ValueError):
            damaged = True
            actions.append("root attribute format_version was damaged: rewritten")
    if not damaged:
        return
    check_free_space(store.path, 2 * store.path.stat().st_size + (256 << 10), "repairing")
    tmp = store.path.with_name(f".{store.path.name}.{uuid.uuid4().hex[:8]}.compact.tmp")
    create_exclusive(tmp, store.path, "temporary copy")
    with writing(tmp, store.path, "repairing", cleanup=[tmp]):
        with h5py().File(tmp, "w") as out:
            root_attrs(out, new=True)
            if created:
                out.attrs["created"] = created
            for fp, attrs, ids_parts, x_parts in plan:
                if ids_parts and attrs["dim"] is not None and attrs["dtype"] is not None:
                    attrs = {k: v for k, v in attrs.items() if v is not None}
                    append_rows(out, attrs, np.concatenate(ids_parts), np.concatenate(x_parts), store.compression,
                                source=store.path, store_path=store.path)
        fsync_file(tmp)
        backup = _quarantine(store, store.path,
                             f"{store.path.name}.{_dt.datetime.now().strftime('%Y%m%dT%H%M%S')}.damaged")
        try:
            os.link(store.path, backup)
        except OSError:  # pragma: no cover - filesystems without hard links
            shutil.copy2(store.path, backup)
        os.replace(tmp, store.path)
        fsync_dir(store.path.parent)
    actions.append(f"rewrote {store.path} with the intact rows; the damaged original is kept as {backup}")
    with contextlib.suppress(OSError):
        fsync_dir(store.quarantine_dir)
