"""A site's own data: a generic CSV, class folders, an unlabelled image folder, a DICOM folder.

Loaders behind :func:`cxr_embed.io.manifest.load_manifest` for the layouts that are not a
public dataset's table:

* ``"csv"`` -- a table with ``path`` and ``patient_id``; label columns are named with
  ``labels=`` or auto-detected (see :func:`label_columns`);
* ``"folders"`` -- one subfolder per class;
* ``"images"`` -- an unlabelled folder of PNG/JPEG/TIFF/BMP/GIF files;
* ``"dicom_folder"`` -- DICOM files recognised by content, headers only.

Folder scans list regular files only (:func:`cxr_embed.io._tables.walk_files`): a FIFO, socket
or device in the folder is reported, never opened.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import ImageReadError, ManifestError
from ._tables import (IMAGE_SUFFIXES, LABEL_DTYPE, RASTER_SUFFIXES, assemble, check_blank, check_text, duplicates,
                      id_from_path, ids_and_paths, image_suffix, label_values, read_header, read_table, snake, text,
                      walk_files, warn)
from .annotation_datasets import VINDR_FINDINGS
from .public_datasets import CHEXPERT_LABELS, GOOGLE2019_LABELS, NIH_LABELS

__all__ = ["label_columns"]

logger = logging.getLogger(__name__)

# numeric columns of a generic CSV that are never labels, even when all 0/1
_METADATA_NAMES = frozenset({
    "age", "sex", "view", "width", "height", "rows", "columns", "follow_up", "followup",
    "bits_stored", "bits_allocated", "frame", "frames", "n_frames", "number_of_frames",
    "year", "fold", "split", "study", "series", "instance", "index", "weight", "dpi",
    "pixel_spacing", "spacing", "size", "channels", "orig_split",
})
_METADATA_PATTERN = re.compile(
    r"^(orig_|original_)|_(id|width|height|mm|px|spacing|index|count|number|year|fold|split|size)$")
_MIN_ROWS_CONSTANT = 10  # a column constant over fewer rows may be a real label of a small table
# label names of the public datasets: such a column is a label even when constant in a subset
_KNOWN_FINDINGS = frozenset({*NIH_LABELS, *CHEXPERT_LABELS.values(), *GOOGLE2019_LABELS.values(),
                             *VINDR_FINDINGS.values(), "normal", "abnormal", "pneumonia", "covid",
                             "covid_19", "tuberculosis"})


# ---------------------------------------------------------------------------
# generic CSV
# ---------------------------------------------------------------------------
def label_columns(df: pd.DataFrame, exclude: Sequence[str] = ()) -> tuple[list[str], dict[str, list[str]]]:
    """Which columns of a generic table are labels, and which label-like ones were passed over.

    A column is a label when its name is not reserved (``exclude``) nor metadata (``age``,
    ``width``, ``orig_*``, ``*_id`` ...), its values are numeric with at least one present and
    every present value in {1, 0, -1}, and it is neither

    * a DICOM header attribute (its name, ignoring case, spaces and underscores, is a DICOM
      keyword such as ``InstanceNumber``, ``Samples per Pixel``, ``RescaleSlope``, or carries a
      ``dicom`` token such as ``PixelRepresentation_DICOM``), nor
    * constant (one value in every row that has one, over at least ten rows),

    unless its name is a finding of a public dataset (``pneumothorax``, ``cardiomegaly``,
    ``google2019_fracture`` ...), which stays a label even when constant in a subset.

    Parameters
    ----------
    df : DataFrame of shape (n_rows, n_columns)
        The table as read.
    exclude : sequence of str
        Reserved columns (``path``, ``patient_id``, ``image_id``, the id column).

    Returns
    -------
    labels : list of str
        The label columns, in table order.
    ignored : dict
        ``{"constant": [...], "dicom_header": [...]}``: label-like columns passed over.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"path": list("abcdefghij"), "effusion": [1, 0] * 5, "InstanceNumber": [1] * 10,
    ...                   "flag": [1] * 10, "pneumothorax": [0] * 10, "age": [0, 1] * 5})
    >>> label_columns(t, exclude=["path"])
    (['effusion', 'pneumothorax'], {'constant': ['flag'], 'dicom_header': ['InstanceNumber']})
    """
    from pydicom.datadict import keyword_dict  # pydicom is a dependency; loaded only for auto-detection

    keywords = {k.lower() for k in keyword_dict}
    labels: list[str] = []
    ignored: dict[str, list[str]] = {"constant": [], "dicom_header": []}
    skip = set(exclude)
    for name in df.columns:
        if name in skip or not _label_like(str(name), df[name]):
            continue
        known = snake(name) in _KNOWN_FINDINGS
        low = str(name).lower()
        if not known and (re.search(r"(^|[^a-z])dicom([^a-z]|$)", low) or re.sub(r"[^0-9a-z]", "", low) in keywords):
            ignored["dicom_header"].append(name)
        elif not known and _constant(df[name]):
            ignored["constant"].append(name)
        else:
            labels.append(name)
    return labels, ignored


def _constant(col: pd.Series) -> bool:
    values = pd.to_numeric(col, errors="coerce").dropna()
    return len(values) >= _MIN_ROWS_CONSTANT and values.nunique() == 1


def _label_like(name: str, col: pd.Series) -> bool:
    low = name.lower()
    if low in _METADATA_NAMES or _METADATA_PATTERN.search(low):
        return False
    if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
        return False
    values = pd.to_numeric(col, errors="coerce").dropna()
    return len(values) > 0 and bool(values.isin([0, 1, -1]).all())


def _load_generic(csv: Path, root: Path | None, labels: Sequence[str] | None,
                  id_column: str | None) -> tuple[pd.DataFrame, Path, list[str]]:
    header = read_header(csv)
    id_col = id_column if id_column is not None else ("image_id" if "image_id" in header else "path")
    need = ["path", "patient_id"] + ([id_col] if id_col != "path" else [])
    raw = read_table(csv, "csv", required=need, str_columns=["path", "patient_id", id_col])
    root = root if root is not None else csv.parent
    check_blank(raw, csv, need)
    check_text(raw, csv, need)
    ids, abs_paths = ids_and_paths(text(raw["path"]), root)
    if id_col != "path":
        ids = text(raw[id_col])
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
        labels, ignored = label_columns(raw, exclude=sorted(reserved))
        note = (f"{csv}: took {len(labels)} column(s) as labels: {labels[:20]}"
                + (f" ... ({len(labels)} in all)" if len(labels) > 20 else ""))
        passed = [f"{why.replace('_', ' ')} {cols[:10]}" for why, cols in ignored.items() if cols]
        if passed:
            warn(note + "; not taken (" + "; ".join(passed) + "); pass labels= to choose")
        else:
            logger.info("%s", note)

    y = np.empty((len(labels), len(raw)), dtype=LABEL_DTYPE)
    for j, c in enumerate(labels):
        y[j] = label_values(raw[c], csv, c)
    meta = {}
    if id_col != "image_id" and "image_id" in raw.columns:  # overridden, but kept for reference
        meta["source_image_id"] = raw["image_id"].astype(str).to_numpy()
    extras = raw.drop(columns=[c for c in raw.columns if c in reserved or c in labels])
    extras = extras.rename(columns={c: c.lower() for c in extras.columns
                                    if c.lower() in ("sex", "age", "view") and c.lower() not in extras.columns})
    out = assemble(csv, {"image_id": ids, "path": abs_paths, "patient_id": text(raw["patient_id"])},
                   labels, y, meta, extras, snake_extras=False)
    if id_col != "path" and out["image_id"].duplicated().any():
        dup = duplicates(out["image_id"])
        hint = (" the paths are unique, so id_column='path' derives ids from them"
                if not out["path"].duplicated().any() else " fix the table")
        raise ManifestError(f"{csv}: column {id_col!r} has duplicate image ids ({dup}); image ids must be "
                            f"unique;{hint}")
    return out, root, labels


# ---------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------
def subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "__")))


def has_raster_image(folder: Path, skipped: set[str]) -> bool:
    return any(image_suffix(f) in RASTER_SUFFIXES for f in walk_files(folder, skipped))


def first_dicom(folder: Path, skipped: set[str]) -> Path | None:
    from . import dicom as _dicom

    return next((f for f in walk_files(folder, skipped) if _dicom.is_dicom(f)), None)


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
        image_id = id_from_path(f.relative_to(folder).as_posix(), None)
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


def _load_images(folder: Path, patient_pattern: str | None,
                 skipped: set[str]) -> tuple[pd.DataFrame, Path, list[str]]:
    """An unlabelled folder (searched recursively) of PNG/JPEG/TIFF/BMP images, for extraction and prediction."""
    files = [f for f in walk_files(folder, skipped) if image_suffix(f) in RASTER_SUFFIXES]
    if not files:
        raise ManifestError(f"{folder}: format 'images' expects image files "
                            f"({', '.join(sorted(RASTER_SUFFIXES))}) in the folder or its subfolders; found none")
    if patient_pattern is None:
        logger.info("%s: no patient_pattern, so every image is its own patient", folder)
    out = pd.DataFrame(_image_rows(folder, files, patient_pattern), columns=["image_id", "path", "patient_id"])
    return out, folder, []


def _load_folders(folder: Path, patient_pattern: str | None,
                  skipped: set[str]) -> tuple[pd.DataFrame, Path, list[str]]:
    files_of = {d: [f for f in walk_files(d, skipped) if image_suffix(f) in IMAGE_SUFFIXES] for d in subdirs(folder)}
    class_dirs = [d for d, files in files_of.items() if files]
    if not class_dirs:
        raise ManifestError(f"{folder}: format 'folders' expects one subfolder per class holding images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}); found none")
    label_of: dict[str, str] = {}
    for d in class_dirs:
        name = snake(d.name)
        if name in label_of.values():
            raise ManifestError(f"{folder}: class folders {d.name!r} and "
                                f"{[k for k, v in label_of.items() if v == name][0]!r} both map to label {name!r}")
        label_of[d.name] = name
    files = [(f, d.name) for d in class_dirs for f in files_of[d]]
    rows = _image_rows(folder, [f for f, _ in files], patient_pattern)
    classes = np.array([cls for _, cls in files], dtype=object)
    labels = list(label_of.values())
    y = np.vstack([(classes == cls) for cls in label_of]).astype(LABEL_DTYPE)
    out = assemble(folder, {"image_id": [r[0] for r in rows], "path": [r[1] for r in rows],
                            "patient_id": [r[2] for r in rows]}, labels, y, {"label": classes})
    return out, folder, labels


def _load_dicom_folder(folder: Path, salt: str | None, skipped: set[str]) -> tuple[pd.DataFrame, Path, list[str]]:
    from . import dicom as _dicom  # sibling module; pydicom loads with it

    rows, no_image, unreadable = [], [], []
    for f in walk_files(folder, skipped):
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
        spacing = meta.get("pixel_spacing") or (None, None)
        rows.append({
            "image_id": id_from_path(rel, None),
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
        warn(f"{folder}: skipped {len(no_image)} DICOM file(s) without an image (no Rows/Columns: "
             f"structured report, presentation state, DICOMDIR ...), e.g. {no_image[:5]}")
    if unreadable:
        warn(f"{folder}: skipped {len(unreadable)} unreadable DICOM file(s), e.g. {unreadable[:3]}; "
             f"re-copy or re-export them")
    if not rows:
        raise ManifestError(f"{folder}: no DICOM image found (files are recognised by content: "
                            f"128-byte preamble + 'DICM'); check the folder or pass another format")
    out = pd.DataFrame(rows)
    no_key = out["patient_id"].isna()
    if no_key.any():
        warn(f"{folder}: {int(no_key.sum())} DICOM file(s) have no PatientID; each is treated as its "
             f"own patient (patient_id = image_id), e.g. {out.loc[no_key, 'image_id'].tolist()[:5]}")
        out.loc[no_key, "patient_id"] = out.loc[no_key, "image_id"]
    return out, folder, []
