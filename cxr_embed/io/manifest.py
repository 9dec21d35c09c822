"""Dataset tables: every supported layout becomes one tidy :class:`pandas.DataFrame`.

:func:`load_manifest` reads a generic CSV, the label tables of the public chest X-ray datasets
(NIH ChestX-ray14 with the Google 2019 labels, CheXpert, PadChest, MIMIC-CXR-JPG, RSNA
Pneumonia, VinDr-CXR, SIIM-ACR), a folder with one subfolder per class, a folder of images or
a folder of DICOM files, and returns the same columns whatever the source::

    image_id | path | patient_id | <label columns...> | <metadata columns...>

* ``image_id`` -- unique str, stable across machines (never an absolute path);
* ``path`` -- absolute path of the image file (str);
* ``patient_id`` -- str; every split in cxr_embed is grouped by it;
* one float32 column per label: 1.0 positive, 0.0 negative, NaN missing,
  -1.0 uncertain (only where the format has uncertain labels, e.g. CheXpert); these values
  are exact in float32, at half the memory of float64 (``.to_numpy(dtype=float)`` widens);
* metadata with normalised names and values: ``sex`` ("M"/"F"/"O"),
  ``age`` (years, float), ``view`` ("PA", "AP", "LL", ...), ``frontal_lateral``
  ("frontal"/"lateral"), plus whatever else the source carries.

``df.attrs`` holds ``"labels"`` (list of label column names), ``"format"``,
``"source"`` (absolute path read) and ``"root"`` (folder image paths were
resolved against). :func:`summarize_manifest` counts images, patients, labels,
views and sexes for a report or the ``cxr-embed manifest`` command.

The loaders live in :mod:`cxr_embed.io.local_datasets` (generic CSV and folders),
:mod:`cxr_embed.io.public_datasets` (NIH, CheXpert, PadChest, MIMIC-CXR-JPG) and
:mod:`cxr_embed.io.annotation_datasets` (RSNA, VinDr-CXR, SIIM-ACR); the rules they share
(regular files only, header before body, no control characters, extra columns never replace
built ones) in :mod:`cxr_embed.io._tables`.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import ManifestError, MissingFilesError
from . import _tables
from .annotation_datasets import VINDR_RULES, _load_rsna, _load_siim, _load_vindr
from .local_datasets import (_load_dicom_folder, _load_folders, _load_generic, _load_images, first_dicom,
                             has_raster_image, subdirs)
from .public_datasets import (CHEXPERT_LABELS, GOOGLE2019_LABELS, NIH_LABELS, _load_chexpert, _load_mimic,
                              _load_nih, _load_padchest, chexpert_tables)

__all__ = ["load_manifest", "summarize_manifest", "FORMATS", "CHEXPERT_LABELS", "NIH_LABELS",
           "GOOGLE2019_LABELS", "FRONTAL_VIEWS", "LATERAL_VIEWS"]

logger = logging.getLogger(__name__)

#: Formats understood by :func:`load_manifest` (besides ``"auto"``).
FORMATS = ("csv", "chexpert", "nih", "padchest", "mimic", "rsna", "vindr", "siim",
           "folders", "dicom_folder", "images")
_FOLDER_FORMATS = ("folders", "dicom_folder", "images")

#: View codes (upper case, spaces collapsed) read as frontal projections.
FRONTAL_VIEWS = frozenset({"PA", "AP", "POSTEROANTERIOR", "ANTEROPOSTERIOR", "FRONTAL", "AP_HORIZONTAL",
                           "AP HORIZONTAL", "PA_HORIZONTAL", "AP AXIAL", "AP SUPINE", "AP_SUPINE", "AP LLD",
                           "AP RLD", "PA LLD", "PA RLD"})
#: View codes read as lateral projections.
LATERAL_VIEWS = frozenset({"LL", "RL", "L", "LAT", "LATERAL", "XTABLE LATERAL", "LARGE LATERAL", "SWIMMERS"})

_MAX_AGE = 120.0  # years; above this an age is a data-entry error (NIH and RSNA have a few)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
def load_manifest(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    root: str | os.PathLike | None = None,
    check_files: bool = True,
    labels: Sequence[str] | None = None,
    id_column: str | None = None,
    patient_pattern: str | None = None,
    salt: str | None = None,
    rule: str | None = None,
) -> pd.DataFrame:
    """Read a dataset table (or image folder) into a tidy DataFrame.

    Parameters
    ----------
    path : str or path-like
        A table (``.csv``, ``.csv.gz`` or a ``.zip`` holding one CSV): generic, or a public
        dataset's (NIH ``Data_Entry_2017*.csv`` or the Google 2019 NIH labels, CheXpert,
        PadChest, MIMIC-CXR-JPG metadata or label table, RSNA ``stage_2_train_labels.csv``,
        VinDr-CXR annotations, SIIM-ACR ``train-rle.csv``); or a folder: one holding such a
        table (``Data_Entry_2017*``, ``labels.csv``, CheXpert's ``train.csv`` + ``valid.csv``,
        MIMIC's metadata, or the one table a loader recognises), one subfolder per class, images,
        or DICOM files (searched recursively). Only regular files are ever opened.
    format : {"auto", "csv", "chexpert", "nih", "padchest", "mimic", "rsna", "vindr", "siim", \
"folders", "dicom_folder", "images"}, default "auto"
        ``"auto"`` recognises tables by their header (checked before the body is read; see
        ``docs/manifests.md``) and folders by content: at least two subfolders with
        PNG/JPEG/TIFF/BMP files -> folders; any DICOM file, recognised by content ->
        dicom_folder; otherwise any PNG/JPEG/TIFF/BMP file in the folder or below -> images,
        an unlabelled table for extraction and prediction.
    root : str or path-like, optional
        Folder that relative image paths of a table are resolved against. Default: the
        table's folder (for CheXpert, its parent when the paths start with the folder's name).
        Not used for folder formats.
    check_files : bool, default True
        Raise :class:`~cxr_embed.exceptions.MissingFilesError` when image files are
        missing. ``False`` loads the table anyway (the paths are still absolute).
    labels : sequence of str, optional
        Generic CSV only: the label columns, overriding auto-detection. Auto-detection
        takes the numeric columns whose non-missing values are all in {1, 0, -1}, that
        have at least one non-missing value, and whose name is not metadata (``age``,
        ``width``, ``height``, ``follow_up``, ``rows``, ``orig_*``, ``*_id``, ...), nor a
        DICOM header attribute, nor constant (unless named like a public dataset's finding);
        one line (a warning when something was passed over) says what it took.
    id_column : str, optional
        Generic CSV only: column whose values become ``image_id``. ``"path"`` derives
        the id from the path (relative to ``root``, image suffix removed), which is also
        the default when the CSV has no ``image_id`` column. An overridden ``image_id``
        column is kept as metadata ``source_image_id``.
    patient_pattern : str, optional
        ``"folders"`` and ``"images"`` only: regular expression searched in each file name; its first
        group (or the group named ``patient``) is the patient id, e.g. ``r"(person\\d+)_"``.
        Default: every image is its own patient (``patient_id = image_id``).
    salt : str, optional
        ``"dicom_folder"`` only: salt of the patient key (see
        :func:`cxr_embed.io.dicom.patient_key`); default ``$CXR_EMBED_SALT`` or the
        library default. ``patient_id`` is the salted hash, never the raw PatientID.
    rule : {"any", "majority"}, optional
        ``"vindr"`` only: an image is positive for a finding when any of its radiologists
        marked it (``"any"``, the default) or more than half of them did (``"majority"``).

    Returns
    -------
    DataFrame of shape (n_images, 3 + n_labels + n_metadata)
        Columns ``image_id``, ``path``, ``patient_id``, the float32 label columns, then
        metadata. ``df.attrs`` has ``"labels"``, ``"format"``, ``"source"``, ``"root"``
        (and ``"rule"`` for VinDr-CXR).

    Raises
    ------
    ManifestError
        Unknown format, missing required columns, duplicate image ids, label values
        outside {1, 0, -1, blank}, a control character in an id or path, an empty table
        or folder, a manifest path that is not a regular file or folder (FIFO, socket, device).
    MissingFilesError
        ``path`` does not exist, or (with ``check_files=True``) images are missing;
        the message lists the first ten and the count.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "labels.csv").write_text("path,patient_id,effusion,age\\na.png,p1,1,61\\nb.png,p1,,62\\n")
    >>> df = load_manifest(d / "labels.csv", check_files=False)
    >>> df.attrs["labels"], df["image_id"].tolist(), df["effusion"].tolist(), df["age"].tolist()
    (['effusion'], ['a', 'b'], [1.0, nan], [61.0, 62.0])

    A VinDr-CXR box table (one row per radiologist and finding):

    >>> _ = (d / "train.csv").write_text(
    ...     "image_id,class_name,rad_id,x_min,y_min,x_max,y_max\\n"
    ...     "img1,Cardiomegaly,R8,1,2,3,4\\nimg1,No finding,R9,,,,\\nimg1,No finding,R10,,,,\\n")
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # "VinDr-CXR publishes no patient ids ..."
    ...     any_ = load_manifest(d / "train.csv", check_files=False)
    ...     most = load_manifest(d / "train.csv", check_files=False, rule="majority")
    >>> any_.loc[0, ["cardiomegaly", "no_finding"]].tolist(), most.loc[0, ["cardiomegaly", "no_finding"]].tolist()
    ([1.0, 0.0], [0.0, 1.0])

    The public datasets, where they are on disk:

    >>> import cxr_embed
    >>> df = cxr_embed.load_manifest("CheXpert-v1.0-small")  # doctest: +SKIP
    >>> df["split"].value_counts().to_dict()  # doctest: +SKIP
    {'train': 223414, 'valid': 234}
    >>> df = cxr_embed.load_manifest("chest_xray/train", patient_pattern=r"(person\\d+)_")  # doctest: +SKIP
    >>> cxr_embed.summarize_manifest(df)["n_images"]  # doctest: +SKIP
    5216
    """
    source = Path(os.path.abspath(os.fspath(path)))
    try:
        mode = os.stat(source).st_mode
    except FileNotFoundError as e:
        raise MissingFilesError(
            f"{source}: manifest path does not exist; expected a CSV file or an image folder") from e
    except OSError as e:
        raise ManifestError(f"{source}: cannot read ({e.strerror}); expected a CSV file or an image folder") from e
    if format not in ("auto", *FORMATS):
        raise ManifestError(
            f"{source}: unknown format {format!r}; supported: 'auto', " + ", ".join(repr(f) for f in FORMATS))
    if not stat.S_ISDIR(mode):
        _tables.regular_file(source, "a table (CSV) or an image folder")
    skipped: set[str] = set()
    if format == "auto":
        source, format = _detect_format(source, skipped)
        logger.info("%s: detected manifest format %r", source, format)
    elif format in _FOLDER_FORMATS:
        if not source.is_dir():
            raise ManifestError(f"{source}: format {format!r} needs a folder, got a file")
    elif source.is_dir():
        found = _table_in_folder(source, skipped, want=format)
        if found is None:
            raise ManifestError(f"{source}: format {format!r} needs a table (.csv, .csv.gz, .zip), got a folder "
                                f"without one")
        source = found[0]

    _reject_options(format, labels=labels, id_column=id_column, patient_pattern=patient_pattern, salt=salt,
                    rule=rule)
    root_path = None if root is None else Path(os.path.abspath(os.fspath(root)))
    if root_path is not None and format in _FOLDER_FORMATS:
        raise ManifestError(f"{source}: root= is only used by CSV formats (tables); format {format!r} reads "
                            f"the folder itself")

    if format == "csv":
        df, root_path, labels_out = _load_generic(source, root_path, labels, id_column)
    elif format == "vindr":
        df, root_path, labels_out = _load_vindr(source, root_path, skipped, rule)
    elif format == "padchest":
        df, root_path, labels_out = _load_padchest(source, root_path, skipped, labels)
    elif format in _TABLE_LOADERS:
        df, root_path, labels_out = _TABLE_LOADERS[format](source, root_path, skipped)
    elif format == "folders":
        df, root_path, labels_out = _load_folders(source, patient_pattern, skipped)
    elif format == "images":
        df, root_path, labels_out = _load_images(source, patient_pattern, skipped)
    else:
        df, root_path, labels_out = _load_dicom_folder(source, salt, skipped)

    df = _finish(df, labels_out, source=source, check_files=check_files, root=root_path)
    _tables.warn_skipped(source, skipped)
    df.attrs["labels"] = list(labels_out)
    df.attrs["format"] = format
    df.attrs["source"] = str(source)
    df.attrs["root"] = str(root_path)
    if format == "vindr":
        df.attrs["rule"] = rule or VINDR_RULES[0]
    return df


_TABLE_LOADERS = {"chexpert": _load_chexpert, "nih": _load_nih, "mimic": _load_mimic,
                  "rsna": _load_rsna, "siim": _load_siim}


def summarize_manifest(df: pd.DataFrame) -> dict[str, Any]:
    """Count images, patients, labels, views and sexes of a manifest.

    Parameters
    ----------
    df : DataFrame of shape (n_images, n_columns)
        A table returned by :func:`load_manifest` (its ``attrs["labels"]`` name the
        label columns; without attrs, no label is counted).

    Returns
    -------
    dict
        JSON-serialisable: ``format``, ``source``, ``n_images``, ``n_patients``,
        ``images_per_patient`` (min/median/max), ``n_outside_root`` (image paths outside
        ``attrs["root"]``, e.g. absolute or ``../..`` paths in a CSV; 0 without a root),
        ``labels`` (per label: ``positive``, ``negative``, ``uncertain``, ``missing``),
        ``views``, ``frontal_lateral``, ``sex`` (value counts, missing values under
        ``"missing"``; empty when the column is absent) and ``age`` (min/median/max/missing,
        or empty).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"image_id": ["a", "b"], "path": ["/data/a.png", "/elsewhere/b.png"],
    ...                    "patient_id": ["p1", "p1"], "effusion": [1.0, float("nan")],
    ...                    "view": ["PA", "AP"]})
    >>> df.attrs.update(labels=["effusion"], root="/data")
    >>> s = summarize_manifest(df)
    >>> s["n_images"], s["n_patients"], s["labels"]["effusion"]["missing"], s["views"], s["n_outside_root"]
    (2, 1, 1, {'AP': 1, 'PA': 1}, 1)
    """
    for col in ("image_id", "patient_id"):
        if col not in df.columns:
            raise ManifestError(f"summarize_manifest: expected a load_manifest table with column {col!r}; "
                                f"got columns {list(df.columns)[:10]}")
    per_patient = df.groupby("patient_id", sort=False).size()
    out: dict[str, Any] = {
        "format": df.attrs.get("format"),
        "source": df.attrs.get("source"),
        "n_images": int(len(df)),
        "n_patients": int(df["patient_id"].nunique()),
        "images_per_patient": ({"min": int(per_patient.min()), "median": float(per_patient.median()),
                                "max": int(per_patient.max())} if len(df) else {}),
        "n_outside_root": _outside_root(df),
        "labels": {},
    }
    for name in df.attrs.get("labels", []):
        v = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
        out["labels"][name] = {
            "positive": int(np.sum(v == 1)),
            "negative": int(np.sum(v == 0)),
            "uncertain": int(np.sum(v == -1)),
            "missing": int(np.sum(np.isnan(v))),
        }
    for col, key in (("view", "views"), ("frontal_lateral", "frontal_lateral"), ("sex", "sex")):
        out[key] = _value_counts(df[col]) if col in df.columns else {}
    if "age" in df.columns:
        age = pd.to_numeric(df["age"], errors="coerce")
        out["age"] = {"min": _num(age.min()), "median": _num(age.median()), "max": _num(age.max()),
                      "missing": int(age.isna().sum())}
    else:
        out["age"] = {}
    return out


def _outside_root(df: pd.DataFrame) -> int:
    root = df.attrs.get("root")
    if not root or root == "None" or "path" not in df.columns:
        return 0
    base = os.path.join(os.path.normpath(str(root)), "")
    paths = df["path"].astype(str).map(os.path.normpath)
    return int((~paths.str.startswith(base)).sum())


# ---------------------------------------------------------------------------
# format detection
# ---------------------------------------------------------------------------
def _format_of(header: Sequence[str]) -> str | None:
    """The table format a header belongs to, or None."""
    cols = set(header)
    findings = any(c in CHEXPERT_LABELS for c in header)
    if {"Image Index", "Finding Labels"} <= cols:
        return "nih"
    if {"ImageID", "ImageDir", "Labels"} <= cols:
        return "padchest"
    if {"subject_id", "study_id"} <= cols and ({"dicom_id", "ViewPosition"} <= cols or findings):
        return "mimic"
    if "Path" in cols and findings:
        return "chexpert"
    if {"patientId", "Target"} <= cols:
        return "rsna"
    if {"image_id", "class_name"} <= cols:
        return "vindr"
    if {"ImageId", "EncodedPixels"} <= cols:
        return "siim"
    if "path" in cols:
        return "csv"
    return None


def _detect_table_format(table: Path) -> str:
    cols = _tables.read_header(table)
    fmt = _format_of(cols)
    if fmt is None:
        raise ManifestError(
            f"{table}: unknown manifest format; header columns {cols[:12]}; supported: "
            f"'nih' (Image Index, Finding Labels, Patient ID), 'chexpert' (Path + findings such as Cardiomegaly), "
            f"'padchest' (ImageID, ImageDir, Labels), 'mimic' (dicom_id, subject_id, study_id, ViewPosition), "
            f"'rsna' (patientId, Target), 'vindr' (image_id, class_name), 'siim' (ImageId, EncodedPixels), "
            f"'csv' (path, patient_id, label columns); rename the columns or pass format=")
    return fmt


def _detect_format(source: Path, skipped: set[str]) -> tuple[Path, str]:
    if not source.is_dir():
        return source, _detect_table_format(source)
    found = _table_in_folder(source, skipped)
    if found is not None:
        return found
    if len([d for d in subdirs(source) if has_raster_image(d, skipped)]) >= 2:
        return source, "folders"
    if first_dicom(source, skipped) is not None:
        return source, "dicom_folder"
    if has_raster_image(source, skipped):
        return source, "images"
    seen = [p.name + ("/" if p.is_dir() else "") for p in sorted(source.iterdir())[:10]]
    raise ManifestError(
        f"{source}: cannot tell the format of this folder (first entries: {seen}); "
        f"expected a CSV, PNG/JPEG/TIFF images (in class subfolders for labels), or DICOM files; "
        f"pass format= one of {', '.join(FORMATS)}")


def _table_in_folder(folder: Path, skipped: set[str], want: str | None = None) -> tuple[Path, str] | None:
    """The table (and its format) a folder stands for, or None when it holds no table.

    ``Data_Entry_2017*`` (NIH), then ``labels.csv``, then a CheXpert folder (``train.csv`` +
    ``valid.csv``: the folder itself), then the only table, then among several the one a loader
    recognises (for MIMIC-CXR-JPG, the metadata table).
    """
    tables = _tables.tables_in(folder, skipped)
    if not tables:
        return None
    nih = [t for t in tables if t.name.startswith("Data_Entry_2017")]
    if len(nih) == 1 and want in (None, "nih"):
        return nih[0], "nih"
    named = [t for t in tables if t.name == "labels.csv"]
    if named:
        return named[0], want or _detect_table_format(named[0])
    if want in (None, "chexpert") and chexpert_tables(folder):
        fmts = {_format_of(_tables.read_header(t)) for t in chexpert_tables(folder)}
        if fmts == {"chexpert"}:
            return folder, "chexpert"
    if len(tables) == 1:
        return tables[0], want or _detect_table_format(tables[0])
    if len(tables) > 50:
        raise ManifestError(f"{folder}: holds {len(tables)} tables; pass the one to read")
    headers = {t: _tables.read_header(t) for t in tables}
    fmts = {t: _format_of(h) for t, h in headers.items()}
    cands = [t for t in tables if (fmts[t] == want if want else fmts[t] is not None)]
    if cands and {fmts[t] for t in cands} == {"mimic"}:
        metadata = [t for t in cands if "dicom_id" in headers[t]]
        if len(metadata) == 1:
            return metadata[0], "mimic"
    if len(cands) == 1:
        return cands[0], fmts[cands[0]] or want
    listed = ", ".join(f"{t.name} ({fmts[t] or 'not recognised'})" for t in tables[:10])
    raise ManifestError(f"{folder}: holds several CSV files ({', '.join(t.name for t in tables[:10])}) and "
                        f"cannot tell which to read [{listed}]; pass the one to read, e.g. {tables[0]}")


def _reject_options(format: str, **options: Any) -> None:
    allowed = {"csv": {"labels", "id_column"}, "folders": {"patient_pattern"}, "images": {"patient_pattern"},
               "dicom_folder": {"salt"}, "vindr": {"rule"}, "padchest": {"labels"}}.get(format, set())
    for name, value in options.items():
        if value is not None and name not in allowed:
            where = {"labels": "format='csv' or 'padchest'", "id_column": "format='csv'", "rule": "format='vindr'",
                     "patient_pattern": "format='folders' or 'images'", "salt": "format='dicom_folder'"}[name]
            raise ManifestError(f"{name}= applies to {where} only, but this manifest is {format!r}")


# ---------------------------------------------------------------------------
# shared post-processing
# ---------------------------------------------------------------------------
def _finish(df: pd.DataFrame, labels: Sequence[str], *, source: Path, check_files: bool,
            root: Path) -> pd.DataFrame:
    if len(df) == 0:
        raise ManifestError(f"{source}: the manifest holds no images")
    df = df.reset_index(drop=True)
    for col in ("image_id", "path", "patient_id"):
        if pd.api.types.infer_dtype(df[col], skipna=False) != "string":
            df[col] = df[col].astype(str)
    _check_printable(df, source)
    if df["image_id"].duplicated().any():
        raise ManifestError(f"{source}: duplicate image ids ({_tables.duplicates(df['image_id'])}); "
                            f"each image must appear once; remove the repeated rows")
    if df["path"].duplicated().any():
        raise ManifestError(f"{source}: the same image file is listed under several image ids "
                            f"({_tables.duplicates(df['path'])}); one file must be one row, or its embedding would "
                            f"sit on both sides of a split; remove the repeated rows")
    if "sex" in df.columns:
        df["sex"] = _normalise_sex(df["sex"])
    if "age" in df.columns:
        df["age"] = _normalise_age(df["age"], source)
    if "view" in df.columns:
        df["view"] = _map_unique(df["view"], _view_code)
        implied = _map_unique(df["view"], lambda v: "frontal" if v in FRONTAL_VIEWS else
                              "lateral" if v in LATERAL_VIEWS else np.nan)
    if "frontal_lateral" in df.columns:
        df["frontal_lateral"] = _map_unique(df["frontal_lateral"], lambda v: _text(v).lower()
                                            if isinstance(_text(v), str) else np.nan)
        if "view" in df.columns:
            conflict = (implied.notna() & df["frontal_lateral"].notna() & (implied != df["frontal_lateral"]))
            df["view_conflict"] = conflict.to_numpy(dtype=bool)
            if conflict.any():
                pairs = (df.loc[conflict, "frontal_lateral"] + " + " + df.loc[conflict, "view"]).value_counts()
                _tables.warn(f"{source}: {int(conflict.sum())} image(s) whose view code contradicts their "
                             f"frontal/lateral field ({dict(pairs.head(5))}); flagged in column "
                             f"'view_conflict'; check them before filtering by view")
    elif "view" in df.columns:
        df["frontal_lateral"] = implied
    convert = {c: _tables.LABEL_DTYPE for c in labels if df[c].dtype != _tables.LABEL_DTYPE}
    if convert:
        df = df.astype(convert)
    if check_files:
        missing = [p for p in df["path"] if not os.path.isfile(p)]
        if missing:
            raise MissingFilesError(
                f"{source}: {len(missing)} of {len(df)} image file(s) do not exist (or are not regular files), "
                f"e.g. {missing[:10]}; image paths were resolved against root={root}; fix: pass root= the folder "
                f"the paths are relative to, or check_files=False to load the table anyway")
    return df


def _check_printable(df: pd.DataFrame, source: Path) -> None:
    """Safety net after every loader: no control character in ids or paths (file names included)."""
    for col in ("image_id", "path", "patient_id"):
        rows = _tables.control_rows(df[col])
        if not len(rows):
            continue
        raise ManifestError(f"{source}: {col} holds a control character (NUL, tab, newline ...) in "
                            f"{len(rows)} row(s), e.g. {df[col].iloc[rows[0]]!r}; ids and paths must be "
                            f"printable text; rename those files or fix the table")


def _map_unique(col: pd.Series, func) -> pd.Series:
    """``col.map(func)`` computed once per distinct value (missing values map through ``func(None)``)."""
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    mapped = np.array([func(u) for u in uniques] + [func(None)], dtype=object)
    return pd.Series(mapped[codes], index=col.index, dtype=object)


def _text(v: Any) -> Any:
    """Stripped text, NaN for missing or blank."""
    if isinstance(v, str):
        v = v.strip()
        return v if v else np.nan
    return np.nan if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else str(v)


def _view_code(v: Any) -> Any:
    v = _text(v)
    if not isinstance(v, str):
        return np.nan
    v = re.sub(r"\s+", " ", v).upper()
    return np.nan if v in ("NAN", "NONE", "NULL") else v


def _normalise_sex(col: pd.Series) -> pd.Series:
    table = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}
    return _map_unique(col, lambda v: table.get(_text(v).lower(), np.nan) if isinstance(_text(v), str) else np.nan)


def _normalise_age(col: pd.Series, source: Path) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col):
        years = col.astype(float)
    else:
        years = _map_unique(col, _parse_age).astype(float)
    bad = years > _MAX_AGE
    if bad.any():
        _tables.warn(f"{source}: {int(bad.sum())} age value(s) above {_MAX_AGE:g} years set to missing "
                     f"(data-entry errors; NIH ChestX-ray14 and RSNA have a few)")
        years[bad] = np.nan
    return years


def _parse_age(v: Any) -> float:
    """Years from 45, 45.0, "45", "045Y", "006M", "010W", "003D"; NaN when unreadable."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return np.nan
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    s = str(v).strip().upper()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([YMWD]?)", s)
    if m is None:
        return np.nan
    n = float(m.group(1))
    return {"": n, "Y": n, "M": n / 12.0, "W": n * 7 / 365.25, "D": n / 365.25}[m.group(2)]


def _value_counts(col: pd.Series) -> dict[str, int]:
    counts = col.astype(object).where(col.notna(), "missing").astype(str).value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}


def _num(v: Any) -> float | None:
    return None if pd.isna(v) else float(v)
