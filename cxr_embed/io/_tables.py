"""Shared machinery of the manifest loaders: safe table reading, ids, label values, assembly.

Every loader of :func:`cxr_embed.io.manifest.load_manifest` goes through these helpers, so the
rules hold for every format:

* nothing that is not a regular file is opened (a FIFO named ``labels.csv`` would block a reader
  forever): :func:`regular_file` checks with :func:`os.stat` first, folder scans skip such entries
  and report them;
* a table's header is read and checked before its body (:func:`read_table`), and ``.csv``,
  ``.csv.gz`` and single-file ``.zip`` tables read alike;
* text that becomes an id or a path holds no control character (:func:`check_text`), so a NUL
  byte never reaches the HDF5 store;
* an ``image_id`` derived from a path is never absolute (:func:`id_from_path`);
* columns a loader builds are never replaced by a source column of the same name
  (:func:`assemble`), and the table is built in one step (no fragmented DataFrame).
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import posixpath
import re
import stat
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import ManifestError

# file suffixes taken for images when listing folders, and stripped from derived ids
#: JPEG 2000 as Pillow names it: raw codestreams (.j2k, .j2c, .jpc) and JP2/JPX files (.jp2, .jpx, .jpf)
JPEG2000_SUFFIXES = frozenset({".jp2", ".j2k", ".j2c", ".jpc", ".jpx", ".jpf"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif",
                            ".dcm", ".dicom", ".dic", ".nii", ".nii.gz"}) | JPEG2000_SUFFIXES
RASTER_SUFFIXES = IMAGE_SUFFIXES - {".dcm", ".dicom", ".dic"}
# table files recognised inside folders
TABLE_SUFFIXES = (".csv", ".csv.gz", ".zip")
#: dtype of every manifest label column: 1.0, 0.0, -1.0 and NaN are exact in float32, at half the
#: memory of float64 (PadChest's 193 labels x 160,861 images: 118 MiB instead of 237 MiB)
LABEL_DTYPE = np.dtype(np.float32)


def image_suffix(f: Path) -> str:
    """Lower-case suffix of an image file, ``.nii.gz`` counted as one."""
    return ".nii.gz" if f.name.lower().endswith(".nii.gz") else f.suffix.lower()

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BYTES = bytes([*range(0x20), 0x7f])
_DRIVE = re.compile(r"^(?:[A-Za-z]:)?/+")
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a folder"))


# ---------------------------------------------------------------------------
# files and folders: never open what is not a regular file
# ---------------------------------------------------------------------------
def file_kind(mode: int) -> str:
    """Words for what a ``st_mode`` is (``"a FIFO (named pipe)"``, ``"a regular file"`` ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def regular_file(path: Path, what: str = "a table") -> None:
    """Raise ManifestError unless ``path`` is a regular file (symlinks followed), without opening it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror}); expected {what}") from e
    if not stat.S_ISREG(mode):
        raise ManifestError(f"{path}: is {file_kind(mode)}, not a regular file; expected {what}. cxr_embed "
                            f"never opens special files (reading a FIFO would wait forever); pass the table "
                            f"file itself")


def is_table_name(name: str) -> bool:
    return name.lower().endswith(TABLE_SUFFIXES) and not name.startswith(".")


def table_stem(name: str) -> str:
    """``stage_2_train_labels.csv.zip`` -> ``stage_2_train_labels``."""
    low = name.lower()
    for suffix in (".csv.gz", ".csv.zip", ".zip", ".csv"):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def tables_in(folder: Path, skipped: set[str] | None = None) -> list[Path]:
    """Regular ``.csv``/``.csv.gz``/``.zip`` files directly in ``folder``, sorted by name.

    Entries with a table name that are not regular files (FIFOs, sockets, devices) are not
    opened; their paths are added to ``skipped``.
    """
    out = []
    with os.scandir(folder) as it:
        for entry in it:
            if not is_table_name(entry.name):
                continue
            if entry.is_file():  # follows symlinks; True only for regular files
                out.append(Path(entry.path))
            elif skipped is not None and not entry.is_dir():
                skipped.add(entry.path)
    return sorted(out)


def walk_files(folder: Path, skipped: set[str] | None = None) -> Iterator[Path]:
    """Regular files below ``folder``: a folder's files (sorted), then its subfolders, hidden ones skipped.

    FIFOs, sockets, devices and dangling links are never opened; their paths go to ``skipped``.
    Symlinked folders are not followed (as :func:`os.walk`).
    """
    stack = [str(folder)]
    while stack:
        top = stack.pop()
        files, dirs = [], []
        try:
            with os.scandir(top) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith("__"):
                    dirs.append(entry.path)
            elif entry.is_file():
                files.append(entry.path)
            elif skipped is not None and not entry.is_dir():
                skipped.add(entry.path)
        yield from (Path(f) for f in files)
        stack.extend(reversed(dirs))


def file_index(folders: Iterable[Path], *, by: str = "name", suffixes: frozenset[str] | None = None,
               recursive: bool = False, skipped: set[str] | None = None) -> dict[str, str]:
    """Map file name (``by="name"``) or name without suffix (``by="stem"``) -> absolute path.

    Each folder is listed once (regular files only, first one found wins), so a loader looks
    images up in a dict instead of globbing per row.
    """
    index: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        if recursive:
            found: Iterable[str] = (str(p) for p in walk_files(folder, skipped))
        else:
            found = []
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_file():
                        found.append(entry.path)
                    elif skipped is not None and not entry.is_dir() and not entry.name.startswith("."):
                        skipped.add(entry.path)
            found = sorted(found)
        for p in found:
            name = os.path.basename(p)
            stem, suffix = os.path.splitext(name)
            if suffixes is not None and suffix.lower() not in suffixes:
                continue
            index.setdefault(stem if by == "stem" else name, os.path.abspath(p))
    return index


def warn_skipped(where: Path, skipped: set[str]) -> None:
    """One warning naming the entries a folder scan skipped because they are not regular files."""
    if skipped:
        names = sorted(skipped)
        warn(f"{where}: skipped {len(names)} entr{'y' if len(names) == 1 else 'ies'} that "
                      f"{'is' if len(names) == 1 else 'are'} not a regular file (FIFO, socket, device or "
                      f"dangling link), never opened: {names[:5]}")


# ---------------------------------------------------------------------------
# reading tables: header first, then the body
# ---------------------------------------------------------------------------
def _clean_names(names: Sequence[Any]) -> list[str]:
    stripped = [str(c).strip() for c in names]
    return stripped if len(set(stripped)) == len(stripped) else [str(c) for c in names]


def _raw_header(path: Path) -> list[str]:
    """Column names as pandas names them, from the first 64 KiB of the (decompressed) table only."""
    regular_file(path)
    head = _head(path)
    if not head.strip():
        raise ManifestError(f"{path}: the file is empty; expected a CSV with a header row")
    if b"\n" in head:
        head = head[: head.index(b"\n") + 1]
    try:
        return [str(c) for c in pd.read_csv(io.StringIO(head.decode("utf-8-sig")), nrows=0).columns]
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ManifestError(f"{path}: not a readable UTF-8 CSV ({e}); expected a dataset table") from e


def _head(path: Path, size: int = 1 << 16) -> bytes:
    """The first ``size`` bytes of a table, decompressing .gz/.bz2/.xz and single-file .zip."""
    low = path.name.lower()
    try:
        if low.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/") and not n.startswith("__MACOSX")]
                if len(names) != 1:
                    raise ManifestError(f"{path}: cannot read this table (the archive holds {len(names)} files: "
                                        f"{names[:5]}); expected a .zip holding exactly one CSV; unzip it and "
                                        f"pass the CSV")
                with z.open(names[0]) as f:
                    return _read_some(f, size)
        opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(os.path.splitext(low)[1], open)
        with opener(path, "rb") as f:
            return _read_some(f, size)
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as e:
        raise ManifestError(f"{path}: cannot read this table ({e}); expected a .csv, .csv.gz or a .zip "
                            f"holding exactly one CSV") from e


def _read_some(f, size: int) -> bytes:
    out = b""
    try:
        while len(out) < size:
            chunk = f.read1(min(8192, size - len(out))) if hasattr(f, "read1") else f.read(size - len(out))
            if not chunk:
                break
            out += chunk
    except EOFError:  # a truncated stream: what came before the cut is still the header
        if not out:
            raise
    return out


def read_header(path: Path) -> list[str]:
    """Column names of a CSV (plain, gzip or single-file zip), surrounding spaces stripped."""
    return _clean_names(_raw_header(path))


def read_table(path: Path, fmt: str, *, required: Sequence[str] = (), str_columns: Iterable[str] = (),
               usecols: Iterable[str] | None = None,
               check: Callable[[list[str]], None] | None = None) -> pd.DataFrame:
    """Read a table after checking on its header that the ``required`` columns are there.

    Column names come back with surrounding spaces stripped. ``str_columns`` are read as text
    (``007`` stays ``007``); ``usecols`` limits the body to the columns named (absent ones are
    ignored), which keeps free-text columns out of memory. ``check(header)`` may raise
    :class:`ManifestError` before the body is read.
    """
    raw = _raw_header(path)
    header = _clean_names(raw)
    require(header, path, required, fmt)
    if check is not None:
        check(header)
    name_of = dict(zip(raw, header))
    keep = None if usecols is None else [r for r, h in name_of.items() if h in set(usecols)]
    wanted = set(str_columns)
    # ids and paths as plain Python str (object columns), whatever pandas' default string storage:
    # the loaders work on them in Python, and the CSV parser shares repeated values
    dtype = {r: object for r, h in name_of.items() if h in wanted and (keep is None or r in keep)}
    try:
        with warnings.catch_warnings():  # chunked parsing (a third of the memory); a mixed column becomes object
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            df = pd.read_csv(path, encoding="utf-8-sig", dtype=dtype, usecols=keep, low_memory=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: malformed CSV ({e}); expected a dataset table") from e
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ManifestError(f"{path}: cannot read this table ({e})") from e
    df.columns = [name_of.get(c, c) for c in df.columns]
    if len(df) == 0:
        raise ManifestError(f"{path}: the table has a header but no rows")
    return df


def require(columns: Sequence[str], path: Path, required: Sequence[str], fmt: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise ManifestError(f"{path}: format {fmt!r} needs column(s) {missing}; found {list(columns)[:15]}; "
                            f"pass the right table or another format=")


# ---------------------------------------------------------------------------
# cell checks and conversions
# ---------------------------------------------------------------------------
def csv_lines(rows: np.ndarray) -> list[int]:
    """CSV line numbers (line 1 is the header) of 0-based data rows, the first ten."""
    return [int(r) + 2 for r in rows[:10]]


def _is_blank(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and v != v)


def check_text(df: pd.DataFrame, path: Path, columns: Iterable[str]) -> None:
    """ManifestError when an id or path column holds a NUL byte or another control character."""
    for c in columns:
        if c not in df.columns:
            continue
        values = df[c].to_numpy(dtype=object)
        rows = control_rows(values)
        if not len(rows):
            continue
        raise ManifestError(
            f"{path}: column {c!r} holds a control character (NUL, tab, newline ...) on CSV line(s) "
            f"{csv_lines(rows)} ({len(rows)} in all), e.g. {values[rows[0]]!r}; ids and paths must be "
            f"printable text; fix or remove those rows")


def control_rows(values: Sequence[Any] | pd.Series) -> np.ndarray:
    """Positions of the str values holding a control character (NUL, tab, newline, DEL ...).

    Scans joined blocks of 4096 values at C speed and looks at single values only in a block
    that has a hit, so a clean column of 200,000 paths costs a few milliseconds.
    """
    if isinstance(values, pd.Series):
        if getattr(values.dtype, "storage", None) == "pyarrow":  # vectorised in Arrow, no Python str made
            return np.flatnonzero(values.str.contains(_CONTROL_RE.pattern, regex=True).fillna(False).to_numpy(bool))
        values = values.to_numpy(dtype=object)
    hits = []
    for start in range(0, len(values), 4096):
        block = values[start:start + 4096]
        try:
            joined = " ".join(block)
        except TypeError:  # a missing value or a number among the str
            block = [v if isinstance(v, str) else "" for v in block]
            joined = " ".join(block)
        # UTF-8 writes each control character as its own byte, and no other character uses those
        # bytes: deleting them changes the length exactly when one is there (C speed, 4x a regex)
        encoded = joined.encode("utf-8", "surrogatepass")
        if len(encoded.translate(None, _CONTROL_BYTES)) != len(encoded):
            hits += [start + i for i, v in enumerate(block) if isinstance(v, str) and _CONTROL_RE.search(v)]
    return np.array(hits, dtype=int)


def check_blank(df: pd.DataFrame, path: Path, columns: Iterable[str]) -> None:
    for c in columns:
        values = text(df[c])
        if "" in values:
            rows = np.array([i for i, v in enumerate(values) if not v])
            raise ManifestError(f"{path}: column {c!r} is blank on CSV line(s) {csv_lines(rows)}"
                                f" ({len(rows)} in all); every row needs a value")


def text(col: pd.Series) -> list[str]:
    """Cell values as stripped str, ``""`` for missing (a plain loop: faster than ``.str.strip()``)."""
    return [v.strip() if type(v) is str else "" if _is_blank(v) else str(v) for v in col.to_numpy(dtype=object)]


def label_values(col: pd.Series, path: Path, name: str) -> np.ndarray:
    """Float array with 1/0/-1/NaN, or ManifestError naming bad values and CSV lines."""
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        num = np.array(col, dtype=float)
        blank = np.isnan(num)
    else:
        text = col.astype("string").str.strip()
        blank = col.isna().to_numpy() | (text == "").fillna(True).to_numpy(dtype=bool)
        num = np.array(pd.to_numeric(col.where(~blank), errors="coerce"), dtype=float)
    bad = ~blank & ~np.isin(num, [0.0, 1.0, -1.0])
    if bad.any():
        rows = np.flatnonzero(bad)
        values = list(dict.fromkeys(str(v) for v in col.to_numpy()[rows]))
        raise ManifestError(
            f"{path}: label column {name!r} has values outside {{1, 0, -1, blank}}: {values[:5]} on CSV line(s) "
            f"{csv_lines(rows)}" + (f" ({len(rows)} rows in all)" if len(rows) > 10 else "")
            + "; fix the values, or (generic CSV) pass labels= without this column")
    num[blank] = np.nan
    return num


def yes_no_values(col: pd.Series, path: Path, name: str) -> np.ndarray:
    """YES/NO (any case, also Y/N, TRUE/FALSE, 1/0) -> 1.0/0.0, blank -> NaN; ManifestError otherwise."""
    table = {"yes": 1.0, "y": 1.0, "true": 1.0, "1": 1.0, "1.0": 1.0,
             "no": 0.0, "n": 0.0, "false": 0.0, "0": 0.0, "0.0": 0.0}
    text = col.astype("string").str.strip().str.lower()
    out = text.map(table, na_action="ignore").to_numpy(dtype=float, na_value=np.nan)
    bad = np.isnan(out) & text.notna().to_numpy(dtype=bool) & (text != "").to_numpy(dtype=bool, na_value=False)
    if bad.any():
        rows = np.flatnonzero(bad)
        values = list(dict.fromkeys(str(v) for v in col.to_numpy()[rows]))
        raise ManifestError(f"{path}: column {name!r} should hold YES or NO; found {values[:5]} on CSV line(s) "
                            f"{csv_lines(rows)}; fix those values")
    return out


def snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_") or "unnamed"


def absolute(root: Path, p: str) -> str:
    p = os.path.expanduser(str(p).strip())
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(str(root), p))


def id_from_path(p: str, root: Path | None) -> str:
    """Posix path relative to ``root``, normalised, without an image suffix; never absolute.

    A path outside ``root`` (absolute, or climbing out with ``..``) gives its absolute location
    without the leading ``/`` (or drive letter): the id never starts with ``/`` or ``..``.
    """
    p = str(p).strip().replace("\\", "/")
    if root is not None:
        if not (posixpath.isabs(p) or _DRIVE.match(p)):
            p = posixpath.join(root.as_posix(), p)
        p = posixpath.normpath(p)
        base = posixpath.normpath(root.as_posix()).rstrip("/") + "/"
        if p.startswith(base):
            p = p[len(base):]
    p = _DRIVE.sub("", posixpath.normpath(p))
    while p.startswith("../"):
        p = p[3:]
    stem, suffix = posixpath.splitext(p)
    if p.lower().endswith(".nii.gz"):
        stem, suffix = p[:-7], ".nii.gz"
    return stem if suffix.lower() in IMAGE_SUFFIXES else p


def _plain(p: str) -> bool:
    """A plain relative path: no leading ``/ ~ .`` or space, no ``//``, ``/.``, backslash or drive letter."""
    return (bool(p) and p[0] not in " \t/~." and p[-1] not in " \t" and "//" not in p and "/." not in p
            and "\\" not in p and p[1:2] != ":")


def strip_image_suffix(name: str) -> str:
    i = name.rfind(".")
    return name[:i] if i > name.rfind("/") and name[i:].lower() in IMAGE_SUFFIXES else name


def ids_and_paths(rel: Sequence[str], root: Path) -> tuple[list[str], list[str]]:
    """(image ids, absolute paths) of paths relative to ``root``, as :func:`id_from_path` and :func:`absolute`.

    Plain relative paths (no ``..``, ``./``, ``//``, backslash, leading ``/`` or ``~``, no
    surrounding spaces: all of them in the public tables) take a fast path.
    """
    base = str(root) + os.sep
    ids, paths = [], []
    fast = os.sep == "/"
    for p in rel:
        if fast and _plain(p):
            ids.append(strip_image_suffix(p))
            paths.append(base + p)
        else:
            ids.append(id_from_path(p, root))
            paths.append(absolute(root, p))
    return ids, paths


def ids_from_names(names: Sequence[str]) -> list[str]:
    """Image ids from file names given by a dataset (``00000001_000.png`` -> ``00000001_000``)."""
    return [strip_image_suffix(n) if _plain(n) else id_from_path(n, None) for n in names]


def multi_hot(codes: np.ndarray, tokens: Sequence[Sequence[int]], n_labels: int) -> np.ndarray:
    """Label matrix of shape (n_labels, n), :data:`LABEL_DTYPE`, from per-unique-value token lists.

    ``codes`` (length n, -1 for none) indexes ``tokens`` (one list of label indices per distinct
    source value, as from :func:`pandas.factorize`), so each distinct value is parsed once; the
    matrix is written in place, without an (n, n_labels) intermediate.
    """
    y = np.zeros((n_labels, len(codes)), dtype=LABEL_DTYPE)
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    if not lengths.sum():
        return y
    flat = np.fromiter((j for t in tokens for j in t), dtype=np.int64, count=int(lengths.sum()))
    offsets = np.cumsum(lengths) - lengths
    rows = np.flatnonzero(codes >= 0)
    c = codes[rows]
    counts = lengths[c]
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    y[flat[np.repeat(offsets[c], counts) + within], np.repeat(rows, counts)] = 1.0
    return y


def duplicates(ids: pd.Series) -> str:
    dup = ids[ids.duplicated(keep=False)]
    examples = list(dict.fromkeys(dup.tolist()))
    return f"{len(examples)} id(s) repeated, e.g. {examples[:5]}"


# ---------------------------------------------------------------------------
# assembling the output table in one step
# ---------------------------------------------------------------------------
def assemble(path: Path, core: Mapping[str, Any], label_names: Sequence[str] = (),
             label_matrix: np.ndarray | None = None, meta: Mapping[str, Any] | None = None,
             extras: pd.DataFrame | None = None, *, snake_extras: bool = True) -> pd.DataFrame:
    """Build ``core | labels | meta | extras`` at once; extras never replace a built column.

    Parameters
    ----------
    core : mapping
        ``image_id``, ``path``, ``patient_id`` (arrays of length n).
    label_names : sequence of str
        Names of the label columns, in order.
    label_matrix : ndarray of shape (n_labels, n), optional
        Label values, one row per label (each label contiguous in memory, so the frame holds it
        without a copy when it is already :data:`LABEL_DTYPE`; otherwise converted once).
    meta : mapping, optional
        Metadata columns the loader builds (``sex``, ``age``, ``view`` ...).
    extras : DataFrame, optional
        Source columns passed through; their names are snake-cased (``snake_extras``). One
        whose name equals a built column (``path``, ``image_id``, a label ...) is kept as
        ``source_<name>`` instead, with a warning; it never replaces the built column.
    """
    meta = {k: _column(v) for k, v in (meta or {}).items()}
    parts = [pd.DataFrame({k: _column(v) for k, v in core.items()})]
    n = len(parts[0])
    if label_matrix is not None and len(label_names):
        label_matrix = np.asarray(label_matrix, dtype=LABEL_DTYPE)  # no copy when built as float32
        parts.append(pd.DataFrame(label_matrix.T, columns=list(label_names), copy=False))
    elif len(label_names):
        raise ValueError("assemble: label_names given without label_matrix")
    for k, v in meta.items():  # one Series each: pd.DataFrame(meta) would copy them into one block
        if len(v) != n:
            raise ValueError(f"assemble: metadata column {k!r} has {len(v)} values for {n} rows")
        parts.append(v.rename(k) if isinstance(v, pd.Series) else pd.Series(v, name=k, copy=False))
    taken = set(core) | set(label_names) | set(meta)
    if extras is not None and len(extras.columns):
        renamed, moved = {}, []
        for c in extras.columns:
            name = snake(c) if snake_extras else str(c)
            if name in taken:
                new, k = f"source_{name}", 2
                while new in taken or new in extras.columns:
                    new, k = f"source_{name}_{k}", k + 1
                moved.append(f"{c!r} -> {new!r}")
                name = new
            renamed[c] = name
            taken.add(name)
        if moved:
            warn(f"{path}: source column(s) named like a column the loader builds were kept under another "
                 f"name, never replacing it: {', '.join(moved[:10])}")
        parts.append(extras.set_axis([renamed[c] for c in extras.columns], axis=1).reset_index(drop=True))
    return pd.concat(parts, axis=1) if len(parts) > 1 else parts[0]


def _column(values: Any) -> Any:
    """Text stays plain Python str (object dtype): no copy into another string storage."""
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    if isinstance(values, list) or (isinstance(values, np.ndarray) and values.dtype == object):
        return pd.Series(values, dtype=object)
    return values


def warn(message: str) -> None:
    """``warnings.warn`` pointing at the first caller outside cxr_embed (the user's line)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("cxr_embed"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)
