"""Dataset tables: every supported layout becomes one tidy :class:`pandas.DataFrame`.

:func:`load_manifest` reads a generic CSV, a CheXpert CSV, an NIH ChestX-ray14
``Data_Entry_2017*.csv``, a folder with one subfolder per class, or a folder of
DICOM files, and returns the same columns whatever the source::

    image_id | path | patient_id | <label columns...> | <metadata columns...>

* ``image_id`` -- unique str, stable across machines (never an absolute path);
* ``path`` -- absolute path of the image file (str);
* ``patient_id`` -- str; every split in cxr_embed is grouped by it;
* one float64 column per label: 1.0 positive, 0.0 negative, NaN missing,
  -1.0 uncertain (only where the format has uncertain labels, e.g. CheXpert);
* metadata with normalised names and values: ``sex`` ("M"/"F"/"O"),
  ``age`` (years, float), ``view`` ("PA", "AP", "LL", ...), ``frontal_lateral``
  ("frontal"/"lateral"), plus whatever else the source carries.

``df.attrs`` holds ``"labels"`` (list of label column names), ``"format"``,
``"source"`` (absolute path read) and ``"root"`` (folder image paths were
resolved against). :func:`summarize_manifest` counts images, patients, labels,
views and sexes for a report or the ``cxr-embed manifest`` command.
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import ImageReadError, ManifestError, MissingFilesError

__all__ = ["load_manifest", "summarize_manifest", "FORMATS", "CHEXPERT_LABELS", "NIH_LABELS"]

logger = logging.getLogger(__name__)

#: Formats understood by :func:`load_manifest` (besides ``"auto"``).
FORMATS = ("csv", "chexpert", "nih", "folders", "dicom_folder", "images")

#: CheXpert finding (CSV header) -> label column name.
CHEXPERT_LABELS = {
    "No Finding": "no_finding",
    "Enlarged Cardiomediastinum": "enlarged_cardiomediastinum",
    "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": "lung_opacity",
    "Lung Lesion": "lung_lesion",
    "Edema": "edema",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural_effusion",
    "Pleural Other": "pleural_other",
    "Fracture": "fracture",
    "Support Devices": "support_devices",
}

#: NIH ChestX-ray14 label columns, in output order ("No Finding" first).
NIH_LABELS = (
    "no_finding", "atelectasis", "cardiomegaly", "consolidation", "edema", "effusion",
    "emphysema", "fibrosis", "hernia", "infiltration", "mass", "nodule",
    "pleural_thickening", "pneumonia", "pneumothorax",
)

# file suffixes taken for images when listing folders, and stripped from derived ids
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif",
                             ".dcm", ".dicom", ".dic", ".nii", ".nii.gz"})
_RASTER_SUFFIXES = _IMAGE_SUFFIXES - {".dcm", ".dicom", ".dic"}

# numeric columns of a generic CSV that are never labels, even when all 0/1
_METADATA_NAMES = frozenset({
    "age", "sex", "view", "width", "height", "rows", "columns", "follow_up", "followup",
    "bits_stored", "bits_allocated", "frame", "frames", "n_frames", "number_of_frames",
    "year", "fold", "split", "study", "series", "instance", "index", "weight", "dpi",
    "pixel_spacing", "spacing", "size", "channels", "orig_split",
})
_METADATA_PATTERN = re.compile(
    r"^(orig_|original_)|_(id|width|height|mm|px|spacing|index|count|number|year|fold|split|size)$")

_MAX_AGE = 120.0  # years; above this an age is a data-entry error (NIH has a few)


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
) -> pd.DataFrame:
    """Read a dataset table (or image folder) into a tidy DataFrame.

    Parameters
    ----------
    path : str or path-like
        A CSV file (generic, CheXpert or NIH ``Data_Entry_2017*.csv``), a folder with
        one subfolder per class, or a folder (searched recursively) of DICOM files.
        A folder holding ``Data_Entry_2017*.csv``, ``labels.csv`` or exactly one
        ``*.csv`` is read through that CSV.
    format : {"auto", "csv", "chexpert", "nih", "folders", "dicom_folder", "images"}, default "auto"
        ``"auto"`` recognises CSVs by their header (``Image Index`` + ``Finding Labels``
        -> nih; ``Path`` + a CheXpert finding -> chexpert; ``path`` -> csv) and folders
        by content (at least two subfolders with PNG/JPEG/TIFF/BMP files -> folders;
        any DICOM file, recognised by content -> dicom_folder; otherwise any PNG/JPEG/TIFF/BMP
        file in the folder or below -> images, an unlabelled table for extraction and
        prediction).
    root : str or path-like, optional
        Folder that relative image paths of a CSV are resolved against. Defaults:
        the CSV's folder (csv, nih), the CSV's parent folder or the CSV's folder,
        whichever holds the images (chexpert). Not used for folder formats.
    check_files : bool, default True
        Raise :class:`~cxr_embed.exceptions.MissingFilesError` when image files are
        missing. ``False`` loads the table anyway (the paths are still absolute).
    labels : sequence of str, optional
        Generic CSV only: the label columns, overriding auto-detection. Auto-detection
        takes the numeric columns whose non-missing values are all in {1, 0, -1}, that
        have at least one non-missing value, and whose name is not metadata (``age``,
        ``width``, ``height``, ``follow_up``, ``rows``, ``orig_*``, ``*_id``, ...).
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

    Returns
    -------
    DataFrame of shape (n_images, 3 + n_labels + n_metadata)
        Columns ``image_id``, ``path``, ``patient_id``, the float64 label columns, then
        metadata. ``df.attrs`` has ``"labels"``, ``"format"``, ``"source"``, ``"root"``.

    Raises
    ------
    ManifestError
        Unknown format, missing required columns, duplicate image ids, label values
        outside {1, 0, -1, blank}, an empty table or folder.
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

    The public datasets, where they are on disk:

    >>> import cxr_embed
    >>> df = cxr_embed.load_manifest("CheXpert-v1.0-small/valid.csv")  # doctest: +SKIP
    >>> df.attrs["labels"][:3]  # doctest: +SKIP
    ['no_finding', 'enlarged_cardiomediastinum', 'cardiomegaly']
    >>> df = cxr_embed.load_manifest("chest_xray/train", patient_pattern=r"(person\\d+)_")  # doctest: +SKIP
    >>> cxr_embed.summarize_manifest(df)["n_images"]  # doctest: +SKIP
    5216
    """
    source = Path(os.path.abspath(os.fspath(path)))
    if not source.exists():
        raise MissingFilesError(
            f"{source}: manifest path does not exist; expected a CSV file or an image folder")
    if format not in ("auto", *FORMATS):
        raise ManifestError(
            f"{source}: unknown format {format!r}; supported: 'auto', " + ", ".join(repr(f) for f in FORMATS))
    if format == "auto":
        source, format = _detect_format(source)
        logger.info("%s: detected manifest format %r", source, format)
    elif format in ("folders", "dicom_folder", "images") and not source.is_dir():
        raise ManifestError(f"{source}: format {format!r} needs a folder, got a file")
    elif format in ("csv", "chexpert", "nih") and source.is_dir():
        source = _csv_in_folder(source)
        if source is None:
            raise ManifestError(f"{path}: format {format!r} needs a CSV file, got a folder without one")

    _reject_options(format, labels=labels, id_column=id_column, patient_pattern=patient_pattern, salt=salt)
    root_path = None if root is None else Path(os.path.abspath(os.fspath(root)))
    if root_path is not None and format in ("folders", "dicom_folder", "images"):
        raise ManifestError(f"{source}: root= is only used by CSV formats; format {format!r} reads the folder itself")

    if format == "csv":
        df, root_path, labels_out = _load_generic(source, root_path, labels, id_column)
    elif format == "chexpert":
        df, root_path, labels_out = _load_chexpert(source, root_path)
    elif format == "nih":
        df, root_path, labels_out = _load_nih(source, root_path)
    elif format == "folders":
        df, root_path, labels_out = _load_folders(source, patient_pattern)
    elif format == "images":
        df, root_path, labels_out = _load_images(source, patient_pattern)
    else:
        df, root_path, labels_out = _load_dicom_folder(source, salt)

    df = _finish(df, labels_out, source=source, check_files=check_files, root=root_path)
    df.attrs["labels"] = list(labels_out)
    df.attrs["format"] = format
    df.attrs["source"] = str(source)
    df.attrs["root"] = str(root_path)
    return df


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
        ``images_per_patient`` (min/median/max), ``labels`` (per label: ``positive``,
        ``negative``, ``uncertain``, ``missing``), ``views``, ``frontal_lateral``,
        ``sex`` (value counts, missing values under ``"missing"``; empty when the
        column is absent) and ``age`` (min/median/max/missing, or empty).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"image_id": ["a", "b"], "path": ["/a.png", "/b.png"],
    ...                    "patient_id": ["p1", "p1"], "effusion": [1.0, float("nan")],
    ...                    "view": ["PA", "AP"]})
    >>> df.attrs["labels"] = ["effusion"]
    >>> s = summarize_manifest(df)
    >>> s["n_images"], s["n_patients"], s["labels"]["effusion"]["missing"], s["views"]
    (2, 1, 1, {'AP': 1, 'PA': 1})
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


# ---------------------------------------------------------------------------
# format detection
# ---------------------------------------------------------------------------
def _detect_format(source: Path) -> tuple[Path, str]:
    if source.is_dir():
        csv = _csv_in_folder(source)
        if csv is not None:
            return csv, _detect_csv_format(csv)
        class_dirs = [d for d in _subdirs(source) if _has_raster_image(d)]
        if len(class_dirs) >= 2:
            return source, "folders"
        if _first_dicom(source) is not None:
            return source, "dicom_folder"
        if _has_raster_image(source):
            return source, "images"
        seen = [p.name + ("/" if p.is_dir() else "") for p in sorted(source.iterdir())[:10]]
        raise ManifestError(
            f"{source}: cannot tell the format of this folder (first entries: {seen}); "
            f"expected a CSV, PNG/JPEG/TIFF images (in class subfolders for labels), or DICOM files; "
            f"pass format= one of {', '.join(FORMATS)}")
    return source, _detect_csv_format(source)


def _csv_in_folder(folder: Path) -> Path | None:
    csvs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    nih = [p for p in csvs if p.name.startswith("Data_Entry_2017")]
    if len(nih) == 1:
        return nih[0]
    named = [p for p in csvs if p.name == "labels.csv"]
    if named:
        return named[0]
    if len(csvs) == 1:
        return csvs[0]
    if len(csvs) > 1:
        raise ManifestError(f"{folder}: holds several CSV files ({', '.join(p.name for p in csvs[:10])}); "
                            f"pass the one to read, e.g. {csvs[0]}")
    return None


def _read_header(csv: Path) -> list[str]:
    try:
        return list(pd.read_csv(csv, nrows=0, encoding="utf-8-sig").columns)
    except pd.errors.EmptyDataError as e:
        raise ManifestError(f"{csv}: the file is empty; expected a CSV with a header row") from e
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        raise ManifestError(f"{csv}: not a readable UTF-8 CSV ({e}); expected a dataset table") from e


def _detect_csv_format(csv: Path) -> str:
    cols = _read_header(csv)
    if "Image Index" in cols and "Finding Labels" in cols:
        return "nih"
    if "Path" in cols and any(c in CHEXPERT_LABELS for c in cols):
        return "chexpert"
    if "path" in cols:
        return "csv"
    raise ManifestError(
        f"{csv}: unknown manifest format; header columns {cols[:12]}; supported: "
        f"'nih' (Image Index, Finding Labels, Patient ID), 'chexpert' (Path + findings such as Cardiomegaly), "
        f"'csv' (path, patient_id, label columns); rename the columns or pass format=")


def _reject_options(format: str, **options: Any) -> None:
    allowed = {"csv": {"labels", "id_column"}, "folders": {"patient_pattern"}, "images": {"patient_pattern"},
               "dicom_folder": {"salt"}}.get(format, set())
    for name, value in options.items():
        if value is not None and name not in allowed:
            where = {"labels": "format='csv'", "id_column": "format='csv'",
                     "patient_pattern": "format='folders' or 'images'", "salt": "format='dicom_folder'"}[name]
            raise ManifestError(f"{name}= applies to {where} only, but this manifest is {format!r}")


# ---------------------------------------------------------------------------
# readers, one per format; each returns (df, root, label names)
# ---------------------------------------------------------------------------
def _read_csv(csv: Path, str_columns: Sequence[str] = ()) -> pd.DataFrame:
    header = _read_header(csv)
    dtype = {c: str for c in str_columns if c in header}
    try:
        df = pd.read_csv(csv, encoding="utf-8-sig", dtype=dtype, low_memory=False)
    except pd.errors.ParserError as e:
        raise ManifestError(f"{csv}: malformed CSV ({e})") from e
    if len(df) == 0:
        raise ManifestError(f"{csv}: the table has a header but no rows")
    return df


def _require(df: pd.DataFrame, csv: Path, required: Sequence[str], fmt: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ManifestError(f"{csv}: format {fmt!r} needs column(s) {missing}; found {list(df.columns)[:15]}")


def _load_generic(csv: Path, root: Path | None, labels: Sequence[str] | None,
                  id_column: str | None) -> tuple[pd.DataFrame, Path, list[str]]:
    id_col = id_column if id_column is not None else ("image_id" if "image_id" in _read_header(csv) else "path")
    raw = _read_csv(csv, str_columns=["path", "patient_id", id_col])
    _require(raw, csv, ["path", "patient_id"] + ([id_col] if id_col != "path" else []), "csv")
    root = root if root is not None else csv.parent
    _check_blank(raw, csv, ["path", "patient_id"] + ([id_col] if id_col != "path" else []))
    rel = raw["path"].astype(str)
    abs_paths = [_absolute(root, p) for p in rel]
    if id_col == "path":
        ids = [_id_from_path(p, root) for p in rel]
    else:
        ids = raw[id_col].astype(str).str.strip().tolist()
    reserved = {"path", "patient_id", "image_id", id_col}

    if labels is not None:
        labels = list(labels)
        unknown = [c for c in labels if c not in raw.columns]
        if unknown:
            raise ManifestError(f"{csv}: labels= names column(s) {unknown} that the CSV lacks; "
                                f"columns: {list(raw.columns)[:20]}")
        clash = [c for c in labels if c in reserved]
        if clash:
            raise ManifestError(f"{csv}: labels= names reserved column(s) {clash}; they cannot be labels")
    else:
        labels = [c for c in raw.columns if c not in reserved and _looks_like_label(c, raw[c])]
        logger.info("%s: auto-detected label columns %s", csv, labels)

    out = pd.DataFrame({"image_id": ids, "path": abs_paths, "patient_id": raw["patient_id"].astype(str).str.strip()})
    for c in labels:
        out[c] = _label_values(raw[c], csv, c)
    meta = raw.drop(columns=[c for c in raw.columns if c in reserved or c in labels])
    if id_col != "image_id" and "image_id" in raw.columns:  # overridden, but kept for reference
        meta.insert(0, "source_image_id", raw["image_id"].astype(str))
    meta = meta.rename(columns={c: c.lower() for c in meta.columns
                                if c.lower() in ("sex", "age", "view") and c.lower() not in meta.columns})
    out = pd.concat([out, meta.reset_index(drop=True)], axis=1)
    if id_col != "path" and out["image_id"].duplicated().any():
        dup = _duplicates(out["image_id"])
        hint = (" the paths are unique, so id_column='path' derives ids from them"
                if not out["path"].duplicated().any() else " fix the table")
        raise ManifestError(f"{csv}: column {id_col!r} has duplicate image ids ({dup}); image ids must be "
                            f"unique;{hint}")
    return out, root, labels


def _load_chexpert(csv: Path, root: Path | None) -> tuple[pd.DataFrame, Path, list[str]]:
    raw = _read_csv(csv, str_columns=["Path"])
    _require(raw, csv, ["Path"], "chexpert")
    _check_blank(raw, csv, ["Path"])
    findings = [c for c in CHEXPERT_LABELS if c in raw.columns]
    if not findings:
        raise ManifestError(f"{csv}: format 'chexpert' needs finding columns such as "
                            f"{list(CHEXPERT_LABELS)[:4]}; found {list(raw.columns)[:15]}")
    rel = raw["Path"].astype(str).tolist()
    if root is None:
        root = _chexpert_root(csv, rel)
    found = raw["Path"].astype(str).str.extract(r"(?:^|[/\\])(patient\d+)(?=[/\\])", expand=False)
    patients = np.array(found.astype(object), dtype=object)
    for i in np.flatnonzero(found.isna().to_numpy()):  # not the official layout: the grandparent folder
        parts = [s for s in rel[i].replace("\\", "/").split("/") if s]
        if len(parts) < 3:
            raise ManifestError(f"{csv}: cannot take a patient id from Path {rel[i]!r} (CSV line {i + 2}); "
                                f"expected .../patientNNNNN/studyN/viewN_frontal.jpg")
        patients[i] = parts[-3]
    out = pd.DataFrame({"image_id": [_id_from_path(p, None) for p in rel],
                        "path": [_absolute(root, p) for p in rel],
                        "patient_id": patients})
    for c in findings:
        out[CHEXPERT_LABELS[c]] = _label_values(raw[c], csv, c)
    if "Sex" in raw.columns:
        out["sex"] = raw["Sex"].to_numpy()
    if "Age" in raw.columns:
        out["age"] = raw["Age"].to_numpy()
    if "Frontal/Lateral" in raw.columns:
        out["frontal_lateral"] = raw["Frontal/Lateral"].to_numpy()
    if "AP/PA" in raw.columns:
        out["view"] = raw["AP/PA"].to_numpy()
    known = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *findings}
    for c in raw.columns:
        if c not in known:
            out[_snake(c)] = raw[c].to_numpy()
    return out, root, [CHEXPERT_LABELS[c] for c in findings]


def _chexpert_root(csv: Path, rel: list[str]) -> Path:
    first = rel[0].replace("\\", "/").lstrip("./").split("/")[0] if rel else ""
    candidates = [csv.parent.parent, csv.parent] if first == csv.parent.name else [csv.parent, csv.parent.parent]
    sample = rel[:5]
    for cand in candidates:
        if any(os.path.isfile(_absolute(cand, p)) for p in sample):
            return cand
    return candidates[0]


def _load_nih(csv: Path, root: Path | None) -> tuple[pd.DataFrame, Path, list[str]]:
    raw = _read_csv(csv, str_columns=["Image Index", "Patient ID", "Finding Labels"])
    _require(raw, csv, ["Image Index", "Finding Labels", "Patient ID"], "nih")
    _check_blank(raw, csv, ["Image Index", "Finding Labels", "Patient ID"])
    root = root if root is not None else csv.parent
    index = _nih_image_index(root)
    names = raw["Image Index"].astype(str).str.strip().tolist()
    paths = [index.get(n, os.path.join(str(root), "images", n)) for n in names]
    vocab = {lab.replace("_", " "): lab for lab in NIH_LABELS}
    y = np.zeros((len(raw), len(NIH_LABELS)), dtype=float)
    col_of = {lab: j for j, lab in enumerate(NIH_LABELS)}
    bad: dict[str, list[int]] = {}
    for i, s in enumerate(raw["Finding Labels"].astype(str)):
        for token in s.split("|"):
            key = token.strip().lower().replace("_", " ")
            lab = vocab.get(key)
            if lab is None:
                bad.setdefault(token.strip(), []).append(i + 2)
            else:
                y[i, col_of[lab]] = 1.0
    if bad:
        desc = "; ".join(f"{t!r} on CSV lines {v[:10]}" for t, v in list(bad.items())[:5])
        raise ManifestError(f"{csv}: column 'Finding Labels' has values outside the NIH vocabulary ({desc}); "
                            f"expected '|'-separated names among No Finding, "
                            + ", ".join(lab.replace('_', ' ').title() for lab in NIH_LABELS[1:]))
    out = pd.DataFrame({"image_id": [_id_from_path(n, None) for n in names], "path": paths,
                        "patient_id": raw["Patient ID"].astype(str).str.strip()})
    for j, lab in enumerate(NIH_LABELS):
        out[lab] = y[:, j]
    rename = {"Patient Age": "age", "Patient Gender": "sex", "View Position": "view",
              "Follow-up #": "follow_up", "OriginalImage[Width": "orig_width", "Height]": "orig_height",
              "OriginalImagePixelSpacing[x": "orig_pixel_spacing_x", "y]": "orig_pixel_spacing_y",
              "Finding Labels": "finding_labels"}
    for c in raw.columns:
        if c in ("Image Index", "Patient ID") or c.startswith("Unnamed:"):
            continue
        out[rename.get(c, _snake(c))] = raw[c].to_numpy()
    return out, root, list(NIH_LABELS)


def _nih_image_index(root: Path) -> dict[str, str]:
    """Map file name -> absolute path over root, root/images, root/images_*/ and root/images_*/images."""
    folders = [root, root / "images"]
    if root.is_dir():
        for d in sorted(root.glob("images_*")):
            folders += [d, d / "images"]
    index: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_file() and entry.name not in index:
                    index[entry.name] = os.path.abspath(entry.path)
    logger.debug("%s: indexed %d files for NIH image lookup", root, len(index))
    return index


def _image_rows(folder: Path, files: list[Path], patient_pattern: str | None) -> list[tuple[str, str, str]]:
    """(image_id, absolute path, patient_id) of image files under ``folder``.

    The id is the path relative to ``folder`` without suffix; the patient is the first group
    (or the group named ``patient``) of ``patient_pattern`` searched in the file name, else the id.
    """
    regex = None
    if patient_pattern is not None:
        try:
            regex = re.compile(patient_pattern)
        except re.error as e:
            raise ManifestError(f"patient_pattern={patient_pattern!r} is not a valid regular expression: {e}") from e
        if regex.groups < 1:
            raise ManifestError(f"patient_pattern={patient_pattern!r} needs a capturing group, e.g. r'(person\\d+)_'")
    rows, unmatched = [], []
    for f in files:
        image_id = _id_from_path(f.relative_to(folder).as_posix(), None)
        pid = image_id
        if regex is not None:
            m = regex.search(f.name)
            if m is None:
                unmatched.append(f.relative_to(folder).as_posix())
                continue
            pid = m.group("patient") if "patient" in regex.groupindex else m.group(1)
        rows.append((image_id, os.path.abspath(f), pid))
    if unmatched:
        raise ManifestError(f"{folder}: patient_pattern={patient_pattern!r} matches no patient id in "
                            f"{len(unmatched)} file name(s), e.g. {unmatched[:10]}; widen the pattern "
                            f"(e.g. r'(person\\d+|IM-\\d+)') or leave it out to use one patient per image")
    return rows


def _load_images(folder: Path, patient_pattern: str | None) -> tuple[pd.DataFrame, Path, list[str]]:
    """An unlabelled folder (searched recursively) of PNG/JPEG/TIFF/BMP images, for extraction and prediction."""
    files = [f for f in _walk(folder) if _suffix(f) in _RASTER_SUFFIXES]
    if not files:
        raise ManifestError(f"{folder}: format 'images' expects image files "
                            f"({', '.join(sorted(_RASTER_SUFFIXES))}) in the folder or its subfolders; found none")
    if patient_pattern is None:
        logger.info("%s: no patient_pattern, so every image is its own patient", folder)
    out = pd.DataFrame(_image_rows(folder, files, patient_pattern), columns=["image_id", "path", "patient_id"])
    return out, folder, []


def _load_folders(folder: Path, patient_pattern: str | None) -> tuple[pd.DataFrame, Path, list[str]]:
    class_dirs = [d for d in _subdirs(folder) if _files(d, _IMAGE_SUFFIXES)]
    if not class_dirs:
        raise ManifestError(f"{folder}: format 'folders' expects one subfolder per class holding images "
                            f"({', '.join(sorted(_IMAGE_SUFFIXES))}); found none")
    label_of = {}
    for d in class_dirs:
        name = _snake(d.name)
        if name in label_of.values():
            raise ManifestError(f"{folder}: class folders {d.name!r} and "
                                f"{[k for k, v in label_of.items() if v == name][0]!r} both map to label {name!r}")
        label_of[d.name] = name
    files = [(f, d.name) for d in class_dirs for f in _files(d, _IMAGE_SUFFIXES)]
    rows = [(*r, cls) for r, (_, cls) in zip(_image_rows(folder, [f for f, _ in files], patient_pattern), files)]
    out = pd.DataFrame(rows, columns=["image_id", "path", "patient_id", "label"])
    labels = list(label_of.values())
    for cls, name in label_of.items():
        out[name] = (out["label"] == cls).astype(float)
    out = out[["image_id", "path", "patient_id", *labels, "label"]]
    return out, folder, labels


def _load_dicom_folder(folder: Path, salt: str | None) -> tuple[pd.DataFrame, Path, list[str]]:
    from . import dicom as _dicom  # sibling module; pydicom loads with it

    rows, no_image, unreadable = [], [], []
    for f in _walk(folder):
        if not _dicom.is_dicom(f):
            continue
        rel = f.relative_to(folder).as_posix()
        try:
            meta = _dicom.read_dicom_meta(f, salt=salt)
        except ImageReadError as e:
            unreadable.append(f"{rel} ({e.reason})")
            continue
        if not meta.get("rows") or not meta.get("columns"):
            no_image.append(rel)
            continue
        image_id = _id_from_path(rel, None)
        spacing = meta.get("pixel_spacing") or (None, None)
        rows.append({
            "image_id": image_id,
            "path": os.path.abspath(f),
            "patient_id": meta.get("patient_key"),
            "modality": meta.get("modality"),
            "view": meta.get("view_position"),
            "sex": meta.get("sex"),
            "age": meta.get("age_years"),
            "laterality": meta.get("laterality"),
            "body_part": meta.get("body_part"),
            "photometric_interpretation": meta.get("photometric_interpretation"),
            "transfer_syntax": meta.get("transfer_syntax"),
            "rows": meta.get("rows"),
            "columns": meta.get("columns"),
            "bits_stored": meta.get("bits_stored"),
            "n_frames": meta.get("number_of_frames"),
            "pixel_spacing_row_mm": spacing[0],
            "pixel_spacing_col_mm": spacing[1],
        })
    if no_image:
        warnings.warn(f"{folder}: skipped {len(no_image)} DICOM file(s) without an image (no Rows/Columns: "
                      f"structured report, presentation state, DICOMDIR ...), e.g. {no_image[:5]}", stacklevel=3)
    if unreadable:
        warnings.warn(f"{folder}: skipped {len(unreadable)} unreadable DICOM file(s), e.g. {unreadable[:3]}; "
                      f"re-copy or re-export them", stacklevel=3)
    if not rows:
        raise ManifestError(f"{folder}: no DICOM image found (files are recognised by content: "
                            f"128-byte preamble + 'DICM'); check the folder or pass another format")
    out = pd.DataFrame(rows)
    no_key = out["patient_id"].isna()
    if no_key.any():
        warnings.warn(f"{folder}: {int(no_key.sum())} DICOM file(s) have no PatientID; each is treated as its "
                      f"own patient (patient_id = image_id), e.g. {out.loc[no_key, 'image_id'].tolist()[:5]}",
                      stacklevel=3)
        out.loc[no_key, "patient_id"] = out.loc[no_key, "image_id"]
    return out, folder, []


# ---------------------------------------------------------------------------
# shared post-processing
# ---------------------------------------------------------------------------
def _finish(df: pd.DataFrame, labels: Sequence[str], *, source: Path, check_files: bool,
            root: Path) -> pd.DataFrame:
    if len(df) == 0:
        raise ManifestError(f"{source}: the manifest holds no images")
    df = df.reset_index(drop=True)
    df["image_id"] = df["image_id"].astype(str)
    df["path"] = df["path"].astype(str)
    df["patient_id"] = df["patient_id"].astype(str)
    if df["image_id"].duplicated().any():
        raise ManifestError(f"{source}: duplicate image ids ({_duplicates(df['image_id'])}); "
                            f"each image must appear once; remove the repeated rows")
    if df["path"].duplicated().any():
        raise ManifestError(f"{source}: the same image file is listed under several image ids "
                            f"({_duplicates(df['path'])}); one file must be one row, or its embedding would "
                            f"sit on both sides of a split; remove the repeated rows")
    if "sex" in df.columns:
        df["sex"] = _normalise_sex(df["sex"])
    if "age" in df.columns:
        df["age"] = _normalise_age(df["age"], source)
    if "view" in df.columns:
        df["view"] = _normalise_text(df["view"]).str.upper()
    if "frontal_lateral" in df.columns:
        df["frontal_lateral"] = _normalise_text(df["frontal_lateral"]).str.lower()
    elif "view" in df.columns:
        fl = {"PA": "frontal", "AP": "frontal", "LL": "lateral", "RL": "lateral",
              "LAT": "lateral", "LATERAL": "lateral"}
        df["frontal_lateral"] = df["view"].map(fl)
    for c in labels:
        df[c] = df[c].astype(float)
    if check_files:
        missing = [p for p in df["path"] if not os.path.isfile(p)]
        if missing:
            raise MissingFilesError(
                f"{source}: {len(missing)} of {len(df)} image file(s) do not exist, e.g. {missing[:10]}; "
                f"image paths were resolved against root={root}; fix: pass root= the folder the paths are "
                f"relative to, or check_files=False to load the table anyway")
    return df


def _looks_like_label(name: str, col: pd.Series) -> bool:
    low = name.lower()
    if low in _METADATA_NAMES or _METADATA_PATTERN.search(low):
        return False
    if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
        return False
    values = pd.to_numeric(col, errors="coerce").dropna()
    return len(values) > 0 and bool(values.isin([0, 1, -1]).all())


def _label_values(col: pd.Series, csv: Path, name: str) -> np.ndarray:
    """Float array with 1/0/-1/NaN, or ManifestError naming bad values and CSV lines."""
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        num = np.array(col, dtype=float)
        blank = np.isnan(num)
    else:
        text = col.astype("string").str.strip()
        blank = col.isna().to_numpy() | (text == "").fillna(True).to_numpy()
        num = np.array(pd.to_numeric(col.where(~blank), errors="coerce"), dtype=float)
    bad = ~blank & ~np.isin(num, [0.0, 1.0, -1.0])
    if bad.any():
        rows = np.flatnonzero(bad)
        values = list(dict.fromkeys(str(v) for v in col.to_numpy()[rows]))
        raise ManifestError(
            f"{csv}: label column {name!r} has values outside {{1, 0, -1, blank}}: {values[:5]} on CSV line(s) "
            f"{[int(r) + 2 for r in rows[:10]]}" + (f" ({len(rows)} rows in all)" if len(rows) > 10 else "")
            + "; fix the values, or (generic CSV) pass labels= without this column")
    num[blank] = np.nan
    return num


def _check_blank(df: pd.DataFrame, csv: Path, columns: Sequence[str]) -> None:
    for c in columns:
        blank = df[c].isna() | (df[c].astype("string").str.strip() == "")
        if blank.any():
            rows = np.flatnonzero(blank.to_numpy())
            raise ManifestError(f"{csv}: column {c!r} is blank on CSV line(s) {[int(r) + 2 for r in rows[:10]]}"
                                f" ({len(rows)} in all); every row needs a value")


def _normalise_text(col: pd.Series) -> pd.Series:
    s = col.astype("string").str.strip()
    return s.mask(s == "").astype(object).where(lambda x: x.notna(), np.nan)


def _normalise_sex(col: pd.Series) -> pd.Series:
    table = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}
    return _normalise_text(col).map(lambda v: table.get(str(v).lower(), np.nan) if isinstance(v, str) else np.nan)


def _normalise_age(col: pd.Series, source: Path) -> pd.Series:
    years = col.map(_parse_age).astype(float)
    bad = years > _MAX_AGE
    if bad.any():
        warnings.warn(f"{source}: {int(bad.sum())} age value(s) above {_MAX_AGE:g} years set to missing "
                      f"(data-entry errors; NIH ChestX-ray14 has a few)", stacklevel=4)
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


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _absolute(root: Path, p: str) -> str:
    p = os.path.expanduser(str(p).strip())
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(str(root), p))


def _id_from_path(p: str, root: Path | None) -> str:
    """Posix path relative to root (when under it), normalised, without an image suffix."""
    p = str(p).strip().replace("\\", "/")
    if root is not None and os.path.isabs(p):
        rel = os.path.relpath(p, root)
        if not rel.startswith(".."):
            p = rel.replace("\\", "/")
    p = posixpath.normpath(p)
    stem, suffix = posixpath.splitext(p)
    if p.lower().endswith(".nii.gz"):
        stem, suffix = p[:-7], ".nii.gz"
    return stem if suffix.lower() in _IMAGE_SUFFIXES else p


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_") or "unnamed"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "__")))


def _walk(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _suffix(f: Path) -> str:
    """Lower-case suffix, ``.nii.gz`` counted as one."""
    return ".nii.gz" if f.name.lower().endswith(".nii.gz") else f.suffix.lower()


def _files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    return [f for f in _walk(folder) if _suffix(f) in suffixes]


def _has_raster_image(folder: Path) -> bool:
    return any(_suffix(f) in _RASTER_SUFFIXES for f in _walk(folder))


def _first_dicom(folder: Path) -> Path | None:
    from . import dicom as _dicom

    return next((f for f in _walk(folder) if _dicom.is_dicom(f)), None)


def _duplicates(ids: pd.Series) -> str:
    dup = ids[ids.duplicated(keep=False)]
    examples = list(dict.fromkeys(dup.tolist()))
    return f"{len(examples)} id(s) repeated, e.g. {examples[:5]}"


def _value_counts(col: pd.Series) -> dict[str, int]:
    counts = col.astype(object).where(col.notna(), "missing").astype(str).value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}


def _num(v: Any) -> float | None:
    return None if pd.isna(v) else float(v)


